"""The floors of the package, as docs/design.md draws them, hold in the code: every import of a
megatron_tsp module (at the top or inside a function) reaches a lower floor or its own folder."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "megatron_tsp"


def _floors():
    """{module or folder under megatron_tsp/ ('config.py', 'layers/'): floor} from the table."""
    section = (ROOT / "docs" / "design.md").read_text().split("## Floors of the package")[1]
    floors = {}
    for row in re.findall(r"^\| (\d+) \| (.*?) \|", section, flags=re.MULTILINE):
        for name in re.findall(r"`([a-z_]+(?:\.py|/))`", row[1]):
            floors[name] = int(row[0])
    return floors


def _home(path: Path) -> str:
    """The table's name for a file of the package: its folder, or the file at the top."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] + "/" if len(relative.parts) > 1 else relative.name


def _imported(path: Path):
    """Every megatron_tsp.X the file imports, as files or folders of the package."""
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] != "megatron_tsp" or len(parts) < 2:
                continue
            target = PACKAGE.joinpath(*parts[1:])
            if target.is_dir() or target.with_suffix(".py").is_file():
                yield _home(target.with_suffix(".py") if not target.is_dir()
                            else target / "__init__.py")


def test_every_import_goes_down_a_floor_or_stays_in_its_folder():
    floors = _floors()
    assert {"size_rules.py", "config.py", "comm.py", "layers/", "training/"} <= floors.keys()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        home = _home(path)
        if home in ("__init__.py", "compat/"):
            continue  # applied first, beside the floors (compat imports only itself: below)
        assert home in floors, f"{home} is on no floor of docs/design.md"
        for target in _imported(path):
            if target != home and not floors.get(target, 99) < floors[home]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, wrong


def test_compat_imports_only_itself():
    for path in (PACKAGE / "compat").glob("*.py"):
        assert set(_imported(path)) <= {"compat/"}, path
