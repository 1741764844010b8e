#!/usr/bin/env bash
# One node, all its GPUs in one TSP group (or CPU ranks over gloo when there is no GPU).
# usage: NPROC=8 TSP=8 bash examples/single_node.sh --model-size 1.7b --seq-length 32768 --bf16 --mock-data
# GPUs: 8 x h100
# Any Megatron-LM flag may follow (e.g. --data-path PREFIX --tokenizer-type HuggingFaceTokenizer
# --tokenizer-model DIR in place of --mock-data); with no data flag the embedded corpus is used.
# Before building the model the launcher checks the planner's peak per GPU against the GPU's
# memory. PRINT_ARGS=1 prints pretrain_qwen3.py's flags, one per line, and runs nothing.
set -euo pipefail
# no cd: the paths in the flags are the caller's
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NPROC="${NPROC:-2}"
TSP="${TSP:-$NPROC}"
ARGS=(--tsp-size "$TSP"
      --micro-batch-size "${MICRO_BATCH:-1}" --global-batch-size "${GLOBAL_BATCH:-8}"
      --train-iters "${TRAIN_ITERS:-100}" --lr 3e-4 --min-lr 3e-5 --lr-decay-style cosine
      --lr-warmup-iters 10 --weight-decay 0.1 --clip-grad 1.0
      --log-interval 10 --eval-interval 50 --eval-iters 2
      "$@")
if [ -n "${PRINT_ARGS:-}" ]; then
    printf '%s\n' "${ARGS[@]}"
    exit 0
fi
exec torchrun --standalone --nproc-per-node "$NPROC" "$ROOT/pretrain_qwen3.py" "${ARGS[@]}"
