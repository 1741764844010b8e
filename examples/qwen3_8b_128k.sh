#!/usr/bin/env bash
# Qwen3-8B at 128K tokens per sequence, one TSP group of 8 GPUs per node: each GPU keeps 1/8 of
# the weights and 16K of the 128K tokens (the published TSP setting: D = 8, long context).
#   DATA=/data/corpus_text_document TOKENIZER=/models/Qwen3-8B NODES=1 bash examples/qwen3_8b_128k.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to a --data-path prefix (tools/preprocess_data.py writes one)}"
: "${TOKENIZER:?set TOKENIZER to a local Hugging Face tokenizer directory}"
ARGS=(--tsp-size 8 --model-size 8b
      --seq-length 131072 --max-position-embeddings 131072
      --bf16 --use-distributed-optimizer --overlap-grad-reduce
      --micro-batch-size 1 --global-batch-size "${GLOBAL_BATCH:-64}"
      --train-iters "${TRAIN_ITERS:-5000}" --lr 1e-4 --min-lr 1e-5 --lr-decay-style cosine
      --lr-warmup-iters 100 --weight-decay 0.1 --clip-grad 1.0
      --data-path "$DATA" --split 99,1,0
      --tokenizer-type HuggingFaceTokenizer --tokenizer-model "$TOKENIZER"
      --save "${SAVE:-checkpoints/qwen3-8b-128k}" --load "${LOAD:-${SAVE:-checkpoints/qwen3-8b-128k}}"
      --save-interval 250 --log-interval 1 --eval-interval 250 --eval-iters 2)
if [ "${NODES:-1}" -gt 1 ]; then
    exec sbatch --nodes "$NODES" examples/slurm_multinode.sbatch "${ARGS[@]}"
fi
exec torchrun --standalone --nproc-per-node 8 pretrain_qwen3.py "${ARGS[@]}"
