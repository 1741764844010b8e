"""Run pretrain_qwen3.main on many command lines in one process; print each outcome as JSON.

Used by tests/test_launch_errors.py: importing megatron once keeps 20+ cases fast, while every
case still goes through the real entry point (argument parsing, validation, exit code)."""

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    cases = json.loads(sys.stdin.read())
    import pretrain_qwen3
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
        results.append({"code": code, "stderr": stderr.getvalue()[-2000:],
                        "seconds": time.monotonic() - start})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
