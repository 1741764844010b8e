"""A packed step against the unpacked step with the same tokens: time and peak memory under TSP.

    python -m benchmarks.packed_step --model-size tiny --seq-length 16384 --group-size 2 \\
        [--longest-document N] [--repeats 5] [--output-dir benchmarks/results]

One set of D spawned gloo ranks (benchmarks/launch.py) trains the same TSP model on the same
tokens twice per repeat: once as one causal sequence, once as packed documents of mixed lengths
(--reset-attention-mask: the document offsets of megatron_tsp.documents, made from the host
tokens before the step, as the data path makes them). The two run interleaved, their order
alternating from one repeat to the next, each after an unmeasured warm-up of its own, so a slow
moment of the machine falls on both. Each step is timed between barriers and its peak memory
measured by benchmarks.memory.PeakMemory (the counting CPU allocator). Reported: the median step
time of each, the packed/unpacked ratio of the medians with the ratios' spread over the repeats,
and the peaks. Outputs in --output-dir: NAME.json and NAME.md.
"""

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import List, Optional

import megatron_tsp  # noqa: F401  (megatron-core adaptations before anything imports it)
import numpy
import torch
import torch.distributed as dist

from megatron_tsp.config import Qwen3Config
from megatron_tsp.planner.plan import add_shape_arguments, model_config_from_args
from megatron_tsp.size_rules import Flags, refuse, tsp_problem

from benchmarks.launch import run_ranks
from benchmarks.memory import PeakMemory

MODES = ("unpacked", "packed")
EOD = 0
# the flags of this command line that set the sizes the size rules speak of
PACKED_FLAGS = Flags(group_size="--group-size", seq_length="--seq-length")


def document_lengths(seq_length: int, longest: int, seed: int) -> List[int]:
    """Mixed lengths, log-uniform from 1 token to `longest`, until the sequence is full (the
    last document has no EOD)."""
    generator = numpy.random.default_rng(seed)
    lengths, total = [], 0
    while total < seq_length:
        length = int(numpy.exp(generator.uniform(0, numpy.log(longest))))
        lengths.append(min(length, seq_length - total))
        total += lengths[-1]
    return lengths


def _batch(cfg: Qwen3Config, S: int, b: int, longest: int, seed: int):
    """tokens, labels, positions [b, S] and the host tokens with an EOD ending each document."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(1, cfg.vocab_size, (b, S + 1), generator=generator)
    text[:, numpy.cumsum(document_lengths(S, longest, seed))[:-1] - 1] = EOD
    tokens, labels = text[:, :-1], text[:, 1:]
    return tokens, labels, torch.arange(S).expand(b, S)


def _rank(config: dict, D: int, S: int, b: int, longest: int, seed: int, repeats: int) -> dict:
    """Rank body: {mode: [(seconds, peak bytes) per repeat]}."""
    from megatron_tsp import comm
    from megatron_tsp import parallel_state as ps
    from megatron_tsp.documents import packed_documents
    from megatron_tsp.layers.vocab import masked_token_mean
    from megatron_tsp.layout import local_chunks, scatter_to_local
    from megatron_tsp.models.qwen3 import TSPQwen3Model

    ps.initialize_tsp(D)
    cfg = Qwen3Config(**config)
    model = TSPQwen3Model(cfg)
    model.init_weights(seed)
    tokens, labels, positions = _batch(cfg, S, b, longest, seed)
    local = [scatter_to_local(t, dim=1) for t in (tokens, labels, positions)]
    documents = {"unpacked": None,
                 "packed": packed_documents(tokens, EOD, local_chunks(ps.get_tsp_rank(), D),
                                            2 * D, torch.device("cpu"))}

    def step(mode):
        model.zero_grad(set_to_none=True)
        loss = model(local[0], local[2], labels=local[1], documents=documents[mode])
        to_backprop, _ = masked_token_mean(loss, torch.ones_like(loss))
        to_backprop.backward()
        comm.all_reduce_replicated_grads(model)

    for mode in MODES:
        step(mode)  # warm-up
    measured = {mode: [] for mode in MODES}
    for repeat in range(repeats):
        for mode in (MODES if repeat % 2 == 0 else MODES[::-1]):
            dist.barrier()
            start = time.perf_counter()
            with PeakMemory() as memory:
                step(mode)
                dist.barrier()
            measured[mode].append((time.perf_counter() - start, memory.report.peak_bytes))
    ps.destroy_tsp()
    return measured


def summary(per_rank: List[dict], lengths: List[int]) -> dict:
    """Medians over repeats of the slowest rank's time, the ratio of each repeat, the peaks."""
    repeats = len(per_rank[0]["packed"])
    times = {mode: [max(rank[mode][i][0] for rank in per_rank) for i in range(repeats)]
             for mode in MODES}
    ratios = [p / u for p, u in zip(times["packed"], times["unpacked"])]
    peaks = {mode: max(peak for rank in per_rank for _, peak in rank[mode]) for mode in MODES}
    return {"documents": len(lengths), "longest_document": max(lengths),
            "shortest_document": min(lengths),
            "median_step_s": {mode: statistics.median(times[mode]) for mode in MODES},
            "time_ratio_median": statistics.median(ratios),
            "time_ratio_range": [min(ratios), max(ratios)],
            "peak_bytes": peaks, "memory_ratio": peaks["packed"] / peaks["unpacked"],
            "step_s": times}


def markdown(results: dict) -> str:
    s = results["summary"]
    rows = [f"| {mode} | {s['median_step_s'][mode]:.3f} | {s['peak_bytes'][mode] / 2**20:.1f} |"
            for mode in MODES]
    return "\n".join([
        f"# Packed documents against one sequence: {results['seq_length']} tokens, "
        f"D = {results['group_size']}, {results['repeats']} interleaved repeats (measured)",
        "",
        f"{s['documents']} documents of {s['shortest_document']} to {s['longest_document']} "
        "tokens; the same tokens unpacked.",
        "",
        "| step | median time (s) | peak memory per rank (MiB) |",
        "|---|---|---|",
        *rows,
        "",
        f"packed / unpacked: time {s['time_ratio_median']:.3f} (repeats "
        f"{s['time_ratio_range'][0]:.3f}-{s['time_ratio_range'][1]:.3f}), "
        f"peak memory {s['memory_ratio']:.3f}",
        ""])


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_arguments(p)
    p.add_argument("--seq-length", type=int, default=16384)
    p.add_argument("--group-size", type=int, default=2, help="D: ranks of the TSP group")
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--longest-document", type=int,
                   help="documents are 1 to this many tokens, log-uniform (default S / 4)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default="packed_step", help="output file prefix")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    cfg = model_config_from_args(args)
    cfg = cfg.replace(max_position_embeddings=max(cfg.max_position_embeddings, args.seq_length))
    refuse(tsp_problem(cfg, args.group_size, seq_length=args.seq_length, flags=PACKED_FLAGS))
    longest = args.longest_document or args.seq_length // 4
    for flag in ("--repeats", "--micro-batch-size", "--longest-document"):
        if (getattr(args, flag[2:].replace("-", "_")) or 1) < 1:
            raise ValueError(f"{flag} must be >= 1")
    per_rank = run_ranks(_rank, args.group_size, vars(cfg), args.group_size, args.seq_length,
                         args.micro_batch_size, longest, args.seed, args.repeats)
    results = {"seq_length": args.seq_length, "group_size": args.group_size,
               "micro_batch_size": args.micro_batch_size, "repeats": args.repeats,
               "config": vars(cfg), "torch": torch.__version__,
               "summary": summary(per_rank, document_lengths(args.seq_length, longest,
                                                             args.seed))}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    (args.output_dir / f"{args.name}.md").write_text(table)
    print(table, flush=True)
    return results


if __name__ == "__main__":
    main()
