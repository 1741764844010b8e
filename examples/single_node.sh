#!/usr/bin/env bash
# One node, all its GPUs in one TSP group (or CPU ranks over gloo when there is no GPU).
#   NPROC=8 TSP=8 bash examples/single_node.sh --model-size 1.7b --seq-length 32768 --bf16 ...
# Any Megatron-LM flag may follow; with no data flag the embedded corpus is used.
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC="${NPROC:-2}"
TSP="${TSP:-$NPROC}"
exec torchrun --standalone --nproc-per-node "$NPROC" pretrain_qwen3.py \
    --tsp-size "$TSP" \
    --micro-batch-size "${MICRO_BATCH:-1}" --global-batch-size "${GLOBAL_BATCH:-8}" \
    --train-iters "${TRAIN_ITERS:-100}" --lr 3e-4 --min-lr 3e-5 --lr-decay-style cosine \
    --lr-warmup-iters 10 --weight-decay 0.1 --clip-grad 1.0 \
    --log-interval 10 --eval-interval 50 --eval-iters 2 \
    "$@"
