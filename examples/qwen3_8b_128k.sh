#!/usr/bin/env bash
# Continued pretraining of the released Qwen3-8B at 128K tokens per sequence, one TSP group of 8
# GPUs per node: each GPU keeps 1/8 of the weights and 16K of the 128K tokens (the published TSP
# setting: D = 8, long context). The Hugging Face checkpoint is imported once (a release
# checkpoint: the first launch starts from it at iteration 0 with a fresh optimizer, a relaunch
# resumes this run's own checkpoints, so no --finetune); the context is extended from Qwen3's
# 32K with YaRN (factor 4); documents are packed, each with its own positions and attention.
# Every layer is recomputed in backward: the planner predicts 41 GB per GPU this way, 140 GB
# keeping every activation (python -m megatron_tsp.planner --model-size 8b --seq-length 131072
# --max-position-embeddings 131072 --gpus 8 --distributed-optimizer [recompute flags]).
# usage: HF=/models/Qwen3-8B DATA=/data/qwen3_corpus_text_document bash examples/qwen3_8b_128k.sh
# GPUs: 8 x h100
# DATA is a --data-path prefix tokenized with the same tokenizer (tools/preprocess_data.py
# --tokenizer-model $HF). NODES=N runs N such nodes under SLURM (data parallel across them);
# PRINT_ARGS=1 prints pretrain_qwen3.py's flags, one per line, and runs nothing.
set -euo pipefail
: "${HF:?set HF to a downloaded Hugging Face Qwen3-8B directory (config.json, safetensors, tokenizer)}"
: "${DATA:?set DATA to a --data-path prefix (tools/preprocess_data.py writes one)}"
# relative paths are the caller's, and the checkpoints go under the directory the script is
# run from, not into the source tree
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
HF=$(absolute "$HF")
DATA=$(absolute "$DATA")
CKPT=$(absolute "${CKPT:-checkpoints/qwen3-8b-imported}")
SAVE=$(absolute "${SAVE:-checkpoints/qwen3-8b-128k}")
export SAVE  # under SLURM, the TensorBoard logs go here too
cd "$(dirname "$0")/.."
LOAD="$CKPT"
if [ -f "$SAVE/latest_checkpointed_iteration.txt" ]; then
    LOAD="$SAVE"
fi
# an iteration is 64 sequences of 131,072 tokens (minutes of the node at the planner's compute
# time): a checkpoint and an evaluation every 20 iterations
ARGS=(--tsp-size 8 --load "$LOAD" --use-checkpoint-args
      --seq-length 131072 --max-position-embeddings 131072
      --position-embedding-type yarn --rotary-scaling-factor 4
      --yarn-original-max-position-embeddings 32768
      --reset-position-ids --reset-attention-mask --eod-mask-loss
      --recompute-granularity full --recompute-method uniform --recompute-num-layers 1
      --bf16 --use-distributed-optimizer --overlap-grad-reduce
      --micro-batch-size 1 --global-batch-size "${GLOBAL_BATCH:-64}"
      --train-iters "${TRAIN_ITERS:-1000}" --lr 1e-5 --min-lr 1e-6 --lr-decay-style cosine
      --lr-warmup-iters 50 --weight-decay 0.1 --clip-grad 1.0
      --data-path "$DATA" --split 99,1,0
      --tokenizer-type HuggingFaceTokenizer --tokenizer-model "$HF"
      --save "$SAVE" --save-interval 20 --log-interval 1 --eval-interval 20 --eval-iters 2)
if [ -n "${PRINT_ARGS:-}" ]; then
    printf '%s\n' "${ARGS[@]}"
    exit 0
fi
if [ ! -f "$CKPT/latest_checkpointed_iteration.txt" ]; then
    python tools/convert_checkpoint.py import-hf --hf-path "$HF" --save "$CKPT"
fi
if [ "${NODES:-1}" -gt 1 ]; then
    exec sbatch --nodes "$NODES" examples/slurm_multinode.sbatch "${ARGS[@]}"
fi
exec torchrun --standalone --nproc-per-node 8 pretrain_qwen3.py "${ARGS[@]}"
