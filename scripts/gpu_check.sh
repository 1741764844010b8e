#!/usr/bin/env bash
# GPU check of megatron_tsp on one NVIDIA GPU, in under 8 minutes:
#   (c) SDPA takes the flash kernel for TSP's lower-right causal zigzag chunks (bf16, fwd + bwd)
#   (a) pretrain_qwen3.py --tsp-size 1 --bf16 --mock-data, tiny model, 20 iterations: finite losses
#   (b) Qwen3-1.7B's shape with 4 layers at 32768 tokens, 5 iterations: tokens/s and MFU
#   (d) that run's peak memory against the planner's prediction
#   (e) packed documents: torch's varlen flash kernel equals the CPU path (bf16, fwd + bwd)
# and a summary table at the end. Run from anywhere; logs go to $GPU_CHECK_OUT (/tmp/gpu_check).
#
#   bash scripts/gpu_check.sh [--quick] [--peak-tflops N]
#
# --quick: 10 tiny iterations, and (b) at 8192 tokens for 4 iterations.
# If `import megatron_tsp` fails: wheels in $GPU_CHECK_WHEELS (default .whl/) are installed
# offline; else, with a CUDA torch already installed, megatron-core and the missing packages are
# pip-installed around it (that torch is kept); with no torch at all, scripts/setup.sh runs.
# Exit code: 0 every check passed, 1 a check failed, 2 no CUDA device or no torch (nothing run).
# GPU_CHECK_CPU_REHEARSAL=1 runs the same flow on a CPU (fp32, tiny shapes, (c) and (e) fail) to
# test this script itself.
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=0
PEAK_TFLOPS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --peak-tflops) PEAK_TFLOPS="$2"; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (use --quick, --peak-tflops N)" >&2; exit 2 ;;
    esac
    shift
done

BUDGET_S=450            # every step's timeout is cut to what is left of this
LOGS="${GPU_CHECK_OUT:-/tmp/gpu_check}"
WHEELS="${GPU_CHECK_WHEELS:-.whl}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
mkdir -p "$LOGS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CUDA_DEVICE_MAX_CONNECTIONS=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
REPORT=(env PYTHONWARNINGS=ignore "$PY" scripts/gpu_check_report.py)

ROWS=()
FAILED=0
say() { printf '\n=== %s (%ss elapsed) ===\n' "$1" "$SECONDS"; }
record() {  # record CHECK STATUS DETAIL (no status: FAIL)
    local status=${2:-FAIL}
    ROWS+=("| $1 | $status | ${3:-no result} |")
    [ "$status" = FAIL ] && FAILED=1
    return 0
}
result_of() {  # the "RESULT STATUS DETAIL" line of a helper's output -> "STATUS<TAB>DETAIL"
    grep "^${2:-RESULT} " "$1" | tail -1 | sed -E "s/^${2:-RESULT} ([A-Z]+) (.*)$/\1\t\2/"
}
left() {  # seconds a step may take: its own limit, cut to what is left of the budget
    local rest=$((BUDGET_S - SECONDS))
    [ "$rest" -lt "$1" ] && echo $((rest > 10 ? rest : 10)) || echo "$1"
}
summary() {
    say "summary"
    echo "| check | result | detail |"
    echo "|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo "logs: $LOGS; total ${SECONDS}s"
}

# --- environment ------------------------------------------------------------------------------
say "environment"
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "torch is not importable: running scripts/setup.sh"
    bash scripts/setup.sh 2>&1 | tail -5
    if ! "$PY" -c "import torch" 2>/dev/null; then
        echo "gpu_check: torch is not importable and scripts/setup.sh did not install it;" \
             "nothing was run" >&2
        exit 2
    fi
fi
REHEARSAL="${GPU_CHECK_CPU_REHEARSAL:-0}"
if [ "$REHEARSAL" != 1 ] && \
   ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False): this check needs one" \
         "NVIDIA GPU; nothing was run" >&2
    exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'on',
          torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU (rehearsal)')"
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader \
    2>/dev/null || true

importable() {  # prints torch's and megatron-core's versions
    "$PY" -c "import megatron_tsp, megatron.core as m, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'
print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), megatron-core {m.__version__}, {gpu}')" \
        >"$LOGS/import.log" 2>&1
}
if ! importable; then
    echo "import megatron_tsp failed: $(grep -E 'Error' "$LOGS/import.log" | tail -1)"
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "installing the wheels in $WHEELS (offline) into $LOGS/site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$LOGS/site" \
            "$WHEELS"/*.whl 2>&1 | tail -3
        export PYTHONPATH="$PYTHONPATH:$LOGS/site"
    else
        echo "keeping the installed torch: pip-installing megatron-core 0.19.2 and what is missing"
        PIP=("$PY" -m pip install -q --retries 0 --timeout 15)
        "${PIP[@]}" --ignore-requires-python "megatron-core==0.19.2" 2>&1 | tail -3
        missing=$("$PY" - <<'EOF'
import importlib.util
wanted = {"safetensors": "safetensors", "einops": "einops", "psutil": "psutil", "six": "six",
          "regex": "regex", "yaml": "pyyaml", "pydantic": "pydantic",
          "transformers": "transformers>=4.51", "tensorboard": "tensorboard"}
print(" ".join(pkg for mod, pkg in wanted.items() if importlib.util.find_spec(mod) is None))
EOF
)
        [ -n "$missing" ] && "${PIP[@]}" $missing 2>&1 | tail -3
    fi
fi
IMPORTABLE=0
if importable; then
    IMPORTABLE=1
    record "environment" PASS "$(tail -1 "$LOGS/import.log")"
else
    record "environment" FAIL "import megatron_tsp: $(grep -E 'Error' "$LOGS/import.log" | tail -1 | cut -c1-150) (carry wheels in $WHEELS)"
fi

# --- (c) SDPA flash dispatch (torch only) ------------------------------------------------------
SDPA_S=32768
say "(c) SDPA flash kernel for lower-right causal chunks, S=$SDPA_S"
timeout "$(left 120)" "${REPORT[@]}" sdpa --seq-length "$SDPA_S" 2>&1 | tee "$LOGS/c_sdpa.log"
line=$(result_of "$LOGS/c_sdpa.log")
[ -z "$line" ] && line="FAIL"$'\t'"no result: $(tail -1 "$LOGS/c_sdpa.log" | cut -c1-150)"
record "(c) SDPA flash, lower-right causal chunks" "${line%%$'\t'*}" "${line#*$'\t'}"

# --- (e) packed documents: varlen flash against the CPU path ------------------------------------
if [ $IMPORTABLE = 1 ]; then
    say "(e) packed documents: torch's varlen flash kernel against the CPU path"
    timeout "$(left 90)" "${REPORT[@]}" varlen 2>&1 | tee "$LOGS/e_varlen.log"
    line=$(result_of "$LOGS/e_varlen.log")
    [ -z "$line" ] && line="FAIL"$'\t'"no result: $(tail -1 "$LOGS/e_varlen.log" | cut -c1-150)"
    record "(e) packed documents, varlen flash" "${line%%$'\t'*}" "${line#*$'\t'}"
fi

if [ $IMPORTABLE = 0 ]; then
    record "(a) tiny bf16 training" FAIL "skipped: megatron_tsp is not importable"
    record "(b) 1.7B-shape, 4 layers: tokens/s, MFU" FAIL "skipped"
    record "(d) peak memory vs planner" FAIL "skipped"
    summary
    exit 1
fi

pretrain() {  # pretrain LOG TIMEOUT ARGS...: pretrain_qwen3.py on this GPU under torchrun
    local log=$1 limit=$2; shift 2
    echo "torchrun --nproc-per-node 1 pretrain_qwen3.py $*" | tee "$log"
    timeout "$limit" "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 \
        pretrain_qwen3.py "$@" >>"$log" 2>&1
    local code=$?
    grep -E "iteration +[0-9]+/|tokens/s:" "$log" | sed -E 's/\| (consumed|learning|global|loss scale|number of)[^|]*//g' | cut -c1-200
    [ $code -ne 0 ] && { echo "exit code $code; last lines:"; tail -15 "$log"; }
    return $code
}

# --- (a) tiny model, bf16 ----------------------------------------------------------------------
TINY_ITERS=$([ $QUICK = 1 ] && echo 10 || echo 20)
DTYPE=(--bf16)
[ "$REHEARSAL" = 1 ] && DTYPE=()
TINY=(--tsp-size 1 "${DTYPE[@]}" --mock-data --model-size tiny --seq-length 256 --micro-batch-size 2
      --global-batch-size 4 --train-iters "$TINY_ITERS" --lr 1e-3 --log-interval 1
      --eval-iters 0 --seed 1234)
# megatron-core's fused CUDA paths need Transformer Engine / apex; these flags avoid them
PORTABLE=(--transformer-impl local --no-gradient-accumulation-fusion --no-masked-softmax-fusion
          --no-bias-swiglu-fusion --no-bias-dropout-fusion --no-rope-fusion
          --no-persist-layer-norm)
EXTRA=()
say "(a) tiny Qwen3, bf16, $TINY_ITERS iterations, Megatron's GPU defaults"
pretrain "$LOGS/a_tiny.log" "$(left 150)" "${TINY[@]}"
"${REPORT[@]}" losses "$LOGS/a_tiny.log" --expect "$TINY_ITERS" | tee "$LOGS/a_tiny.result"
line=$(result_of "$LOGS/a_tiny.result")
if [ "${line%%$'\t'*}" != PASS ]; then
    record "(a) tiny bf16, Megatron's GPU defaults" FAIL "${line#*$'\t'}"
    say "(a) again with portable flags: ${PORTABLE[*]}"
    pretrain "$LOGS/a_tiny_portable.log" "$(left 150)" "${TINY[@]}" "${PORTABLE[@]}"
    "${REPORT[@]}" losses "$LOGS/a_tiny_portable.log" --expect "$TINY_ITERS" \
        | tee "$LOGS/a_tiny_portable.result"
    line=$(result_of "$LOGS/a_tiny_portable.result")
    record "(a) tiny bf16, portable flags" "${line%%$'\t'*}" "${line#*$'\t'}"
    EXTRA=("${PORTABLE[@]}")
else
    record "(a) tiny bf16, $TINY_ITERS iterations" PASS "${line#*$'\t'}"
fi

# --- (b) 1.7B shape, 4 layers, long sequence; (d) memory against the planner ------------------
MODEL=1.7b; LAYERS=4
if [ $QUICK = 1 ]; then SEQ=8192; ITERS=4; else SEQ=32768; ITERS=5; fi
DEVICE=()
if [ "$REHEARSAL" = 1 ]; then
    MODEL=tiny; LAYERS=2; SEQ=512; ITERS=3; DEVICE=(--device-name cpu); PEAK_TFLOPS=1
fi
say "(b) Qwen3-$MODEL shape, $LAYERS layers, $SEQ tokens, $ITERS iterations ${EXTRA[*]}"
pretrain "$LOGS/b_1p7b.log" "$(left 240)" --tsp-size 1 --model-size $MODEL \
    --num-layers $LAYERS --seq-length "$SEQ" --micro-batch-size 1 --global-batch-size 1 \
    "${DTYPE[@]}" --mock-data --train-iters "$ITERS" --lr 1e-4 --log-interval 1 --eval-iters 0 \
    --seed 1234 --recompute-granularity full --recompute-method uniform \
    --recompute-num-layers 1 "${EXTRA[@]}"
code=$?
"${REPORT[@]}" losses "$LOGS/b_1p7b.log" --expect "$ITERS" >"$LOGS/b_losses.result"
cat "$LOGS/b_losses.result"
"${REPORT[@]}" throughput "$LOGS/b_1p7b.log" --model-size $MODEL --num-layers $LAYERS \
    --seq-length "$SEQ" ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"} "${DEVICE[@]}" \
    | tee "$LOGS/b_1p7b.result"
line=$(result_of "$LOGS/b_losses.result")
status=${line%%$'\t'*}
tp=$(result_of "$LOGS/b_1p7b.result")
[ "${tp%%$'\t'*}" = FAIL ] && status=FAIL
[ $code -ne 0 ] && status=FAIL
record "(b) $MODEL shape, $LAYERS layers, S=$SEQ: tokens/s, MFU" "${status:-FAIL}" \
    "${tp#*$'\t'}; ${line#*$'\t'}"
line=$(result_of "$LOGS/b_1p7b.result" RESULT-MEMORY)
record "(d) peak memory vs planner (S=$SEQ)" "${line%%$'\t'*}" "${line#*$'\t'}"

summary
exit $FAILED
