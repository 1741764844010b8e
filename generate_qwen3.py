"""Generate from a Qwen3 torch_dist checkpoint (saved at any size) with TSP: prefill runs the
training forward over the zigzag-sharded prompt into a sequence-sharded KV cache; decode uses
each rank's weight shards as its tensor-parallel shards, so no weight moves.

    torchrun --nproc-per-node 2 generate_qwen3.py --tsp-size 2 --load CKPT \\
        --use-checkpoint-args --prompt "To be, or not to be"
    torchrun --nproc-per-node 4 generate_qwen3.py --tsp-size 4 --load CKPT \\
        --use-checkpoint-args --input prompts.jsonl --output results.jsonl --max-new-tokens 128

Greedy unless --temperature > 0 (then --top-k, --top-p, --seed); stops at the tokenizer's
end-of-document token or a --stop text. Rank 0 prints one JSON line per prompt and its time
to first token, decode tokens/s, KV-cache bytes per rank and bytes moved per rank.
"""

import json
import sys

import megatron_tsp  # noqa: F401  (megatron-core adaptations before any megatron import)
import torch

from megatron_tsp import parallel_state as ps
from megatron_tsp.checkpoint import checkpoint_dir, load_model_weights
from megatron_tsp.inference.arguments import parse_generate_args, prepare_generate_args
from megatron_tsp.inference.generate import generate
from megatron_tsp.models.qwen3 import TSPQwen3Model

def _usage_error(message: str) -> None:
    print(f"generate_qwen3.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _cut_at_stop(text: str, stops) -> str:
    ends = [text.index(stop) for stop in stops if stop in text]
    return text[:min(ends)] if ends else text


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_generate_args(argv)
    try:
        run = prepare_generate_args(args, argv)
    except ValueError as error:
        _usage_error(str(error))
    tokenizer, config = run.tokenizer, run.config
    ps.initialize_tsp(args.tsp_size)
    rank = torch.distributed.get_rank()
    model = TSPQwen3Model(config, dtype=run.dtype)
    load_model_weights(model, str(checkpoint_dir(args.load)))
    if torch.cuda.is_available():
        model.cuda()
    stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731

    def stop(tokens):
        return any(s in decode(tokens) for s in args.stop)

    output = open(args.output, "w", encoding="utf-8") if args.output and rank == 0 else None
    try:
        for prompt in run.prompts:
            result = generate(model, prompt.ids, args.max_new_tokens, run.sampling, stop_ids,
                              stop if args.stop else None,
                              min(config.vocab_size, len(tokenizer)), args.kv_block_size)
            per_rank = [None] * args.tsp_size
            torch.distributed.all_gather_object(
                per_rank, (result.cache_bytes, result.prefill_bytes,
                           result.bytes_per_generated_token), group=ps.get_tsp_group())
            if rank != 0:
                continue
            record = {"prompt": prompt.text if prompt.text is not None else decode(prompt.ids),
                      "text": _cut_at_stop(decode(result.tokens), args.stop),
                      "tokens": result.tokens}
            print(json.dumps(record, ensure_ascii=False), flush=True)
            if output:
                output.write(json.dumps(record, ensure_ascii=False) + "\n")
            print(f"{prompt.where}: {len(prompt.ids)} prompt tokens, {len(result.tokens)} "
                  f"generated | time to first token: {result.time_to_first_token_s:.3f} s | "
                  f"decode: {result.decode_tokens_per_s:.1f} tokens/s | KV-cache bytes per "
                  f"rank: {', '.join(str(c) for c, _, _ in per_rank)} | bytes moved per rank, "
                  f"prefill: {', '.join(str(p) for _, p, _ in per_rank)}; per generated token: "
                  f"{', '.join(f'{t:.0f}' for _, _, t in per_rank)}", flush=True)
    finally:
        if output:
            output.close()
    ps.destroy_tsp()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
