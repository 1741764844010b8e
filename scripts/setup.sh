#!/usr/bin/env bash
# One-command set-up: installs megatron_tsp and its pinned dependencies into the current Python.
# megatron-core 0.19.2 declares Python >= 3.12 but runs on 3.11 (see docs/design.md), so it is
# installed with --ignore-requires-python after the packages pip would otherwise try to build.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-python -m pip}"
$PIP install --quiet "torch==2.13.0" "numpy<2.5" "packaging>=24.2"
$PIP install --quiet --ignore-requires-python "megatron-core==0.19.2"
$PIP install --quiet -e ".[test]"
python -c "import megatron_tsp, megatron.core; print('megatron_tsp ready: megatron-core', megatron.core.__version__)"
