"""Run pretrain_qwen3.main on many command lines in one process; print each outcome as JSON.

Used by tests/test_launch_errors.py: importing megatron once keeps 20+ cases fast, while every
case still goes through the real entry point (argument parsing, validation, exit code)."""

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_cases(cases, cwd, cache_dir):
    """[{code, stderr, seconds}] of each (argv, WORLD_SIZE) case, run in a fresh process."""
    result = subprocess.run([sys.executable, str(Path(__file__).resolve())],
                            input=json.dumps([(list(map(str, argv)), world)
                                              for argv, world in cases]),
                            capture_output=True, text=True, timeout=300, cwd=cwd,
                            env=dict(os.environ, MEGATRON_TSP_CACHE=str(cache_dir)))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    cases = json.loads(sys.stdin.read())
    import pretrain_qwen3
    from megatron.training.global_vars import unset_global_variables
    results = []
    for argv, world_size in cases:
        os.environ["WORLD_SIZE"] = str(world_size)
        stderr = io.StringIO()
        start = time.monotonic()
        code = 0
        with contextlib.redirect_stderr(stderr):
            try:
                pretrain_qwen3.main(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
        # a case refused inside Megatron's set_global_variables leaves them set for the next
        unset_global_variables()
        results.append({"code": code, "stderr": stderr.getvalue()[-2000:],
                        "seconds": time.monotonic() - start})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
