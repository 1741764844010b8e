"""The environment scripts/setup.sh builds: megatron-core imports on its own.

Megatron-LM's tools and users' scripts import megatron.core and megatron.training directly,
without importing megatron_tsp first, so they must import in a fresh interpreter that has not
seen megatron_tsp.
"""

import os
import subprocess
import sys


def test_megatron_core_and_training_import_without_megatron_tsp(tmp_path):
    # outside the repository and without PYTHONPATH, so nothing of megatron_tsp is on the path
    # unless installed; the child fails if the parent's imports leaked into it
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    code = ("import sys, megatron.core, megatron.training\n"
            "assert not [m for m in sys.modules if m.startswith('megatron_tsp')]\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ModuleNotFoundError" not in result.stderr, (
        result.stderr[-3000:])
