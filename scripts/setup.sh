#!/usr/bin/env bash
# One-command set-up: installs megatron_tsp and its pinned dependencies into the current Python.
# megatron-core 0.19.2 declares Python >= 3.12 but runs on 3.11 (see docs/design.md), so it is
# installed with --ignore-requires-python after the packages pip would otherwise try to build.
# triton: `import megatron.core` imports it (MoE kernels) and torch's CPU wheel does not bring it;
# 3.7.1 is the release torch 2.13.0's CUDA wheels pin.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-python -m pip}"
$PIP install --quiet "torch==2.13.0" "triton==3.7.1; platform_system == 'Linux'" "numpy<2.5" \
    "packaging>=24.2"
$PIP install --quiet --ignore-requires-python "megatron-core==0.19.2"
$PIP install --quiet -e ".[test]"
# megatron/training/models/{gpt,hybrid}.py import typing.override, new in Python 3.12: on 3.11 a
# start-up line (.pth) gives every interpreter of this environment a stand-in (3.12's only marks
# the method), so that Megatron's own tools and plain scripts import megatron.training without
# importing megatron_tsp.
python - <<'PY'
import sys
import sysconfig
from pathlib import Path

pth = Path(sysconfig.get_paths()["purelib"]) / "megatron_tsp_typing_override.pth"
if sys.version_info < (3, 12):
    pth.write_text("import typing; typing.override = getattr(typing, 'override', lambda f: f)\n")
PY
python -c "import megatron.core, megatron.training"  # as Megatron's own tools start: no megatron_tsp
python -c "import megatron_tsp, megatron.core; print('megatron_tsp ready: megatron-core', megatron.core.__version__)"
