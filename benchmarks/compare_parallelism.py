"""TSP against TP, TP+SP, context parallel and one process: one training step each, side by side.

    python -m benchmarks.compare_parallelism --model-size tiny --seq-lengths 1024 2048 4096 \\
        --group-size 2 [--repeats 3] [--fabric h100-node | --emulate-link 200[,LATENCY_MS]] \\
        [--output-dir benchmarks/results]

Each scheme runs in its own set of D spawned gloo ranks (benchmarks/launch.py) on the same full
model and the same batch; every rank measures its peak memory, the bytes it sent and received by
kind, the time it waited on each kind, and its step time (benchmarks/measure.py). Every scheme is
launched --repeats times, interleaved (tsp, tp, ..., tsp, tp, ...), so that a slow minute of the
machine falls on all of them; times are medians with their spread. --fabric shapes the links so
that the ranks' compute per byte of link is a real machine's: the matmul rate is measured first
(all ranks at once) and the bandwidth set to it / FABRICS[fabric]. Outputs in --output-dir:
NAME.json (schema in benchmarks/report.py), NAME.md, NAME_memory_per_rank.png,
NAME_bytes_per_rank.png, NAME_step_time.png, each run next to the megatron_tsp planner's
prediction.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import List, Optional

import megatron_tsp  # noqa: F401  (megatron-core adaptations before anything imports it)
import torch

from megatron_tsp.config import Qwen3Config
from megatron_tsp.planner.memory import GLOO_COLLECTIVE_COPIES, memory_bytes
from megatron_tsp.planner.plan import add_shape_arguments, model_config_from_args, unsupported
from megatron_tsp.planner.transfers import Layout, transfer_bytes
from megatron_tsp.size_rules import Flags, tsp_problem

from benchmarks import report
from benchmarks.launch import run_ranks
from benchmarks.measure import matmul_rate, measure_scheme
from benchmarks.memory import CPU_METHOD, GPU_METHOD
from benchmarks.netns import EmulatedLink, EmulatedNetwork
from benchmarks.schemes import SCHEMES, TSP_SCHEMES, scheme_group_size, tsp_mode


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_arguments(p)
    p.add_argument("--seq-lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--group-size", type=int, default=2, help="D: ranks per scheme")
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--schemes", nargs="+", choices=SCHEMES,
                   default=["tsp", "tsp+full", "tp", "tp-sp", "cp", "single"])
    p.add_argument("--measured-steps", type=int, default=1,
                   help="measured steps per length, after one warm-up step")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--repeats", type=int, default=3,
                   help="launches of every scheme, interleaved; times are their median")
    p.add_argument("--emulate-link", metavar="BANDWIDTH_MBIT[,LATENCY_MS]",
                   help="each rank in its own network namespace behind a shaped link (root)")
    p.add_argument("--fabric", choices=sorted(FABRICS),
                   help="an emulated link whose bandwidth gives the measured matmul rate a real "
                        "fabric's FLOP per byte (root)")
    p.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default="compare_parallelism", help="output file prefix")
    return p.parse_args(argv)


# FLOP per byte of link: an H100's dense bf16 peak (989 TFLOP/s) over its NVLink 4 bandwidth
# (450 GB/s each way), and over one 400 Gbit/s InfiniBand port (50 GB/s) between nodes
FABRICS = {"h100-node": 2200, "cross-node": 20000}


def fabric_link(fabric: str, group_size: int) -> EmulatedLink:
    """The link of `fabric` for this machine: its matmul rate (every rank measuring at once, as
    they compute in a step) over the fabric's FLOP per byte."""
    gflops = statistics.mean(run_ranks(matmul_rate, group_size))
    mbit = gflops * 1e9 / FABRICS[fabric] * 8 / 1e6
    print(f"[compare_parallelism] matmul {gflops:.1f} GFLOP/s per rank: {fabric} is "
          f"{mbit:.1f} Mbit/s", flush=True)
    return EmulatedLink(round(mbit, 1))


def model_config(args: argparse.Namespace) -> Qwen3Config:
    """The model shape; its position limit raised to the longest sequence measured."""
    cfg = model_config_from_args(args)
    return cfg.replace(max_position_embeddings=max(cfg.max_position_embeddings,
                                                   max(args.seq_lengths)))


def validate(args: argparse.Namespace, cfg: Qwen3Config) -> None:
    """ValueError naming the flag for anything some scheme cannot run, before any rank starts."""
    D = args.group_size
    if D < 2:
        raise ValueError(f"--group-size must be >= 2 (the single scheme is D = 1), got {D}")
    # every scheme of D ranks starts from the TSP model's weights at D (benchmarks/schemes.py)
    problem = tsp_problem(cfg, D, flags=BENCHMARK_FLAGS)
    if problem and set(args.schemes) != {"single"}:
        raise ValueError(f"{problem} (every scheme starts from the TSP model's weights)")
    for scheme in args.schemes:
        for S in args.seq_lengths:
            problem = unsupported(planner_layout(scheme, D), cfg, S, BENCHMARK_FLAGS)
            if problem:
                raise ValueError(f"{problem} (--schemes {scheme})")
    if args.micro_batch_size < 1:
        raise ValueError(f"--micro-batch-size must be >= 1, got {args.micro_batch_size}")
    if args.measured_steps < 1:
        raise ValueError(f"--measured-steps must be >= 1, got {args.measured_steps}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.fabric and args.emulate_link:
        raise ValueError("--fabric and --emulate-link both set the link; give one")


# the flags of this command line that set the sizes the planner's rules speak of
BENCHMARK_FLAGS = Flags(group_size="--group-size", seq_length="--seq-lengths")


def planner_layout(scheme: str, D: int) -> Layout:
    if scheme in TSP_SCHEMES:
        return Layout("tsp", tp=D, recompute=tsp_mode(scheme))
    return {"single": Layout("single"), "cp": Layout("cp", cp=D)}.get(scheme,
                                                                    Layout(scheme, tp=D))


def predicted(scheme: str, cfg: Qwen3Config, D: int, S: int, b: int) -> dict:
    """The planner's numbers for a run on this machine (fp32)."""
    layout = planner_layout(scheme, D)
    transfers = transfer_bytes(layout, cfg, S, b, e=4)
    memory = memory_bytes(layout, cfg, S, b, e=4, collective_copies=GLOO_COLLECTIVE_COPIES)
    return {"peak_bytes": memory.total,
            "sent_bytes": sum(s for s, _ in transfers.values()),
            "received_bytes": sum(r for _, r in transfers.values())}


def _machine() -> dict:
    import megatron.core
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "megatron_core": megatron.core.__version__,
            "device": device}


def run(args: argparse.Namespace, network: Optional[EmulatedNetwork]) -> dict:
    cfg = model_config(args)
    D, b, lengths = args.group_size, args.micro_batch_size, sorted(args.seq_lengths)
    repeats = {(scheme, S): [] for scheme in args.schemes for S in lengths}
    for repeat in range(args.repeats):
        for scheme in args.schemes:
            size = scheme_group_size(scheme, D)
            print(f"[compare_parallelism] {scheme} on {size} rank(s), launch {repeat + 1} of "
                  f"{args.repeats}: {lengths}", flush=True)
            ranks = run_ranks(measure_scheme, size, scheme, vars(cfg), D, lengths, b, args.seed,
                              args.measured_steps, network=network if size > 1 else None)
            for i, S in enumerate(lengths):
                repeats[(scheme, S)].append(report.run_record(
                    scheme, size, S, b, ranks, i, predicted(scheme, cfg, D, S, b)))
    runs = [report.merge_repeats(records) for records in repeats.values()]
    return {
        "schema_version": report.SCHEMA_VERSION, "benchmark": "compare_parallelism",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "command": " ".join(["python -m benchmarks.compare_parallelism", *sys.argv[1:]]),
        "machine": _machine(),
        "network": network.link.as_dict() if network else {"mode": "loopback"},
        "memory_method": GPU_METHOD if torch.cuda.is_available() else CPU_METHOD,
        "model": vars(cfg), "group_size": D, "micro_batch_size": b, "dtype": "float32",
        "seq_lengths": lengths, "repeats": args.repeats, "runs": runs,
    }


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    cfg = model_config(args)
    validate(args, cfg)
    link = EmulatedLink.parse(args.emulate_link) if args.emulate_link else None
    if args.fabric:
        link = fabric_link(args.fabric, args.group_size)
    if link:
        with EmulatedNetwork(link, args.group_size) as network:
            results = run(args, network)
        if args.fabric:
            results["network"]["fabric"] = f"{args.fabric}, {FABRICS[args.fabric]} FLOP/byte"
    else:
        results = run(args, None)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    report.write_json(results, args.output_dir / f"{args.name}.json")
    (args.output_dir / f"{args.name}.md").write_text(report.markdown(results))
    report.plot(results, args.output_dir, args.name)
    print(report.markdown(results))
    return results


if __name__ == "__main__":
    main()
