"""TSP generation against tensor-parallel generation of the same model, side by side.

    python -m benchmarks.compare_decode --model-size tiny --group-size 2 --prompt-length 1024 \\
        --new-tokens 32 [--repeats 3] [--fabric h100-node | --emulate-link 200[,LATENCY_MS]]

Both schemes run greedy generation of the same random model (init_weights(seed)) on D gloo
ranks: tsp is megatron_tsp/inference (prefill by the training forward, sequence-sharded KV
cache, decode on the weight shards with attention merged by log-sum-exp); tp is Megatron TP's
layout on the same shards (benchmarks/tp_decode.py: the prompt whole on every rank, kv heads
split). Reports per scheme the median time to first token and decode tokens/s over --repeats
interleaved launches, the KV cache per rank and the bytes per rank per prefill and per generated
token from the transfer counters, next to the planner's (megatron_tsp/planner/inference.py),
and whether both generated the same tokens. --emulate-link shapes the links between the ranks,
--fabric as benchmarks/compare_parallelism.py does (root: network namespaces + tc,
benchmarks/netns.py).
"""

import argparse
import json
import statistics
from typing import List, Optional

import torch

from benchmarks.compare_parallelism import FABRICS, fabric_link
from benchmarks.launch import run_ranks
from benchmarks.netns import EmulatedLink, EmulatedNetwork
from megatron_tsp.config import PRESETS, Qwen3Config, qwen3_preset
from megatron_tsp.planner.inference import (tp_cache_bytes, tp_decode_bytes, tp_prefill_bytes,
                                            tsp_cache_bytes, tsp_decode_bytes,
                                            tsp_prefill_bytes)

SCHEMES = ("tsp", "tp")


def _measure(scheme: str, config: dict, D: int, prompt_length: int, new_tokens: int,
             seed: int) -> dict:
    from megatron_tsp import parallel_state as ps
    from megatron_tsp.inference.generate import generate
    from megatron_tsp.models.qwen3 import TSPQwen3Model
    from benchmarks.tp_decode import tp_generate
    cfg = Qwen3Config(**config)
    ps.initialize_tsp(D)
    model = TSPQwen3Model(cfg)
    model.init_weights(seed)
    prompt = torch.randint(0, cfg.vocab_size, (prompt_length,),
                           generator=torch.Generator().manual_seed(seed)).tolist()
    if scheme == "tp":
        return tp_generate(model, prompt, new_tokens)
    result = generate(model, prompt, new_tokens)
    return {"tokens": result.tokens, "time_to_first_token_s": result.time_to_first_token_s,
            "decode_tokens_per_s": result.decode_tokens_per_s, "cache_bytes": result.cache_bytes,
            "prefill_bytes": result.prefill_bytes,
            "bytes_per_generated_token": result.bytes_per_generated_token}


def _predicted(scheme: str, cfg: Qwen3Config, D: int, n: int, new: int) -> dict:
    e, tokens = 4, n + new - 1
    if scheme == "tsp":
        return {"cache_bytes": tsp_cache_bytes(cfg, n, new, D, e),
                "prefill_bytes": tsp_prefill_bytes(cfg, n, D, e),
                "bytes_per_generated_token": tsp_decode_bytes(cfg, D, e)}
    return {"cache_bytes": tp_cache_bytes(cfg, tokens, D, e),
            "prefill_bytes": tp_prefill_bytes(cfg, n, D, e),
            "bytes_per_generated_token": tp_decode_bytes(cfg, D, e)}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-size", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--group-size", type=int, default=2)
    p.add_argument("--prompt-length", type=int, default=1024)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--emulate-link", metavar="BANDWIDTH_MBIT[,LATENCY_MS]")
    p.add_argument("--fabric", choices=sorted(FABRICS),
                   help="an emulated link with a real fabric's FLOP per byte for this machine")
    p.add_argument("--output", help="write the results as JSON here")
    args = p.parse_args(argv)
    for flag in ("group_size", "prompt_length", "new_tokens", "repeats"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.fabric and args.emulate_link:
        raise ValueError("--fabric and --emulate-link both set the link; give one")
    return args


def run(args, cfg: Qwen3Config, network) -> dict:
    D = args.group_size
    launches = {scheme: [] for scheme in SCHEMES}
    for _ in range(args.repeats):
        for scheme in SCHEMES:
            launches[scheme].append(run_ranks(_measure, D, scheme, vars(cfg), D,
                                              args.prompt_length, args.new_tokens, args.seed,
                                              network=network))
    results = {}
    for scheme, runs in launches.items():
        ranks = runs[0]
        results[scheme] = {
            "time_to_first_token_s": statistics.median(
                max(r["time_to_first_token_s"] for r in run) for run in runs),
            "decode_tokens_per_s": statistics.median(
                min(r["decode_tokens_per_s"] for r in run) for run in runs),
            "cache_bytes_per_rank": [r["cache_bytes"] for r in ranks],
            "prefill_bytes_per_rank": sum(r["prefill_bytes"] for r in ranks) / D,
            "bytes_per_generated_token_per_rank":
                sum(r["bytes_per_generated_token"] for r in ranks) / D,
            "planner": _predicted(scheme, cfg, D, args.prompt_length, args.new_tokens),
            "tokens": ranks[0]["tokens"]}
    results["same_tokens"] = results["tsp"]["tokens"] == results["tp"]["tokens"]
    return results


def markdown(results: dict) -> str:
    lines = ["| scheme | time to first token (s) | decode tokens/s | KV cache per rank (bytes) "
             "| bytes per prefill (planner) | bytes per generated token (planner) |",
             "|---|---|---|---|---|---|"]
    for scheme in SCHEMES:
        r, p = results[scheme], results[scheme]["planner"]
        lines.append(f"| {scheme} | {r['time_to_first_token_s']:.3f} | "
                     f"{r['decode_tokens_per_s']:.1f} | {max(r['cache_bytes_per_rank'])} "
                     f"({p['cache_bytes']}) | {r['prefill_bytes_per_rank']:.0f} "
                     f"({p['prefill_bytes']:.0f}) | {r['bytes_per_generated_token_per_rank']:.0f} "
                     f"({p['bytes_per_generated_token']:.0f}) |")
    lines.append(f"\nsame greedy tokens: {results['same_tokens']}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    cfg = qwen3_preset(args.model_size)
    if cfg.num_query_groups % args.group_size:
        raise ValueError(f"--group-size {args.group_size}: the tp reference needs kv groups "
                         f"({cfg.num_query_groups}) a multiple of it")
    link = EmulatedLink.parse(args.emulate_link) if args.emulate_link else None
    if args.fabric:
        link = fabric_link(args.fabric, args.group_size)
    if link:
        with EmulatedNetwork(link, args.group_size) as network:
            results = run(args, cfg, network)
        results["network"] = f"{link.bandwidth_mbit} Mbit/s" + (f", {args.fabric}"
                                                                 if args.fabric else "")
    else:
        results = run(args, cfg, None)
        results["network"] = "loopback"
    print(markdown(results))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
