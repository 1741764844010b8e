"""Live and peak tensor bytes on CPU: builds and installs benchmarks/counting_allocator.cpp.

The shared library is compiled once per source and torch version (g++, under a second) into
$XDG_CACHE_HOME/megatron_tsp (default ~/.cache) and loaded with ctypes; `install()` must run
before the process allocates the tensors it wants counted (launch.py does it first thing in
every rank).
"""

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("counting_allocator.cpp")
_lib = None


def _library_path() -> Path:
    key = hashlib.sha256(_SOURCE.read_bytes() + torch.__version__.encode()
                         + torch.__file__.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "megatron_tsp"
    return cache / f"counting_allocator-{key}.so"


def _build(target: Path) -> None:
    torch_dir = Path(torch.__file__).parent
    target.parent.mkdir(parents=True, exist_ok=True)
    # compiled to a private name and renamed: ranks building at once never see half a file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = ["g++", "-O2", "-std=c++17", "-shared", "-fPIC",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           f"-I{torch_dir / 'include'}", str(_SOURCE), f"-L{torch_dir / 'lib'}", "-lc10",
           f"-Wl,-rpath,{torch_dir / 'lib'}", "-o", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        os.unlink(tmp)
        raise RuntimeError(f"building the counting CPU allocator failed (needs g++):\n"
                           f"{result.stderr}")
    os.replace(tmp, target)


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        path = _library_path()
        if not path.exists():
            _build(path)
        lib = ctypes.CDLL(str(path))
        for name in ("counting_allocator_live_bytes", "counting_allocator_peak_bytes"):
            getattr(lib, name).restype = ctypes.c_int64
        _lib = lib
    return _lib


def install() -> None:
    """Route every later CPU tensor allocation of this process through the counter."""
    _load().counting_allocator_install()


def live_bytes() -> int:
    return _load().counting_allocator_live_bytes()


def peak_bytes() -> int:
    """Most live bytes since the last reset_peak()."""
    return _load().counting_allocator_peak_bytes()


def reset_peak() -> None:
    _load().counting_allocator_reset_peak()
