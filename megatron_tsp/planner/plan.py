"""Which layout to train with: per-GPU memory and communication of TSP, TP, TP+SP, CP, TP x CP.

    python -m megatron_tsp.planner --model-size 8b --seq-length 131072 \\
        --max-position-embeddings 131072 --gpus 8 --gpu h100 \\
        [--micro-batch-size 1 --dtype bf16 --distributed-optimizer] [recompute flags]

For every layout of `--gpus` GPUs (a model-parallel group of D GPUs, data parallel over the
rest) and every recompute mode (TSP's of layers/recompute.py; Megatron's none or full), or only
the one the launcher's recompute flags choose when any is given (Megatron's
--recompute-granularity, --recompute-method, --recompute-num-layers, --recompute-modules,
--recompute-activations and TSP's --tsp-recompute-activations, read by the TSP layers' own
layer_recomputes), it predicts the per-GPU memory (megatron_tsp.planner.memory: params, grads,
optimizer state, kept activations, transient buffers; a GPU flash attention kernel), the bytes
each GPU sends and receives per step (megatron_tsp.planner.transfers, the same formulas the
benchmark's counters confirm byte for byte) and the FLOPs it computes (megatron_tsp.planner.flops,
recompute included). It recommends, among the layouts that fit in 90% of the GPU's memory (the
rest is left to the CUDA context, NCCL and allocator fragmentation) or of --memory-budget-gb, the
fastest: compute time at the GPU's peak plus communication time (max(sent, received) over the
link bandwidth), per sequence the whole job processes per step (dp x micro-batch). Overlap,
kernel efficiency and latency are ignored: it ranks layouts, it does not predict step time.
TSP's layouts obey the launcher's size rules (size_rules.py): it never plans what
pretrain_qwen3.py refuses; pretrain_qwen3.py refuses a launch whose plan does not fit
(training/memory_check.py).
"""

import argparse
import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace
from typing import List, Optional, Tuple

from megatron_tsp.config import Qwen3Config, qwen3_preset
from megatron_tsp.config_adapters import UNTIE_FLAG, add_rope_arguments, yarn_from_args
from megatron_tsp.layers.recompute import SUPPORTED_MODULES, Recompute, layer_recomputes
from megatron_tsp.planner.transfers import RECOMPUTE, Layout, transfer_bytes
from megatron_tsp.planner.flops import hardware_flops_per_token
from megatron_tsp.planner.inference import generation_line
from megatron_tsp.planner.memory import MemoryEstimate, memory_bytes
from megatron_tsp.size_rules import (
    LAUNCHER, SIZE_FIELDS, Flags, flag_of, megatron_problem, positions_problem, refuse,
    tsp_problem)

GIB, GB = 2 ** 30, 10 ** 9
# what a layout may plan to allocate: the rest is left to what the planner does not model (the
# CUDA context, NCCL's buffers, the caching allocator's fragmentation)
USABLE_MEMORY_FRACTION = 0.9
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class GPUSpec:
    """Vendor memory capacity, the per-GPU intra-node link bandwidth (one direction) and the
    dense bf16 peak."""

    memory_bytes: int
    link_bytes_per_s: float
    link: str
    flops_per_s: float


GPUS = {
    "h100": GPUSpec(80 * GIB, 450e9, "NVLink 4, 900 GB/s bidirectional", 989e12),
    "h200": GPUSpec(141 * GIB, 450e9, "NVLink 4, 900 GB/s bidirectional", 989e12),
    "mi300x": GPUSpec(192 * GIB, 448e9, "Infinity Fabric, 7 x 128 GB/s bidirectional", 1307e12),
    "a100": GPUSpec(80 * GIB, 300e9, "NVLink 3, 600 GB/s bidirectional", 312e12),
}


@dataclass
class Plan:
    layout: Layout
    memory: MemoryEstimate
    sent: int
    received: int
    comm_s_per_step: float
    comm_s_per_sequence: float
    compute_s_per_sequence: float
    fits: bool

    @property
    def time_s_per_sequence(self) -> float:
        return self.comm_s_per_sequence + self.compute_s_per_sequence


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """--model-size and the explicit shape flags (which override the preset)."""
    parser.add_argument("--model-size", help="a Qwen3 preset: 0.6b ... 32b, tiny")
    for field in SIZE_FIELDS:
        parser.add_argument(flag_of(field), type=int, help="overrides the preset")
    parser.add_argument(UNTIE_FLAG, action="store_true")


def model_config_from_args(args: argparse.Namespace) -> Qwen3Config:
    """The preset with the explicit shape flags applied; without a preset, every shape flag
    that has no default."""
    given = {f: getattr(args, f) for f in SIZE_FIELDS if getattr(args, f) is not None}
    if args.model_size:
        cfg = qwen3_preset(args.model_size).replace(**given)
    else:
        missing = [flag_of(f.name) for f in dataclasses.fields(Qwen3Config)
                   if f.default is dataclasses.MISSING and f.name not in given]
        if missing:
            raise ValueError(f"without --model-size give every shape flag; missing "
                             f"{' '.join(missing)}")
        cfg = Qwen3Config(**given)
    return cfg.replace(tie_word_embeddings=False) if args.untie_embeddings_and_output_weights \
        else cfg


def add_recompute_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher's recompute flags, with Megatron's names and meanings."""
    parser.add_argument("--recompute-granularity", choices=["full", "selective"])
    parser.add_argument("--recompute-method", choices=["uniform", "block"])
    parser.add_argument("--recompute-num-layers", type=int)
    parser.add_argument("--recompute-modules", nargs="+", metavar="MODULE",
                        help=f"with selective: {' '.join(SUPPORTED_MODULES)}")
    parser.add_argument("--recompute-activations", action="store_true",
                        help="Megatron's --recompute-granularity selective")
    parser.add_argument("--tsp-recompute-activations", action="store_true")


def recompute_given(args) -> bool:
    """Whether `args` (the planner's or the launcher's) hold any recompute flag."""
    return any(getattr(args, dest, None) for dest in (
        "recompute_granularity", "recompute_method", "recompute_num_layers", "recompute_modules",
        "recompute_activations", "tsp_recompute_activations"))


def flag_recomputes(args, num_layers: int) -> Tuple[Recompute, ...]:
    """Each layer's choice under the recompute flags in `args` (the planner's or the launcher's
    Megatron args: the same names), by the TSP layers' own layer_recomputes. Megatron's
    --recompute-activations is its selective granularity (validate_args sets it, after the
    launcher's checks have run)."""
    granularity = ("selective" if getattr(args, "recompute_activations", False)
                   else args.recompute_granularity)
    choice = SimpleNamespace(recompute_granularity=granularity,
                             recompute_method=args.recompute_method,
                             recompute_num_layers=args.recompute_num_layers,
                             recompute_modules=args.recompute_modules)
    return tuple(layer_recomputes(choice, num_layers, args.tsp_recompute_activations))


def _choice_name(args) -> str:
    """A layout name for a choice that is no single mode (made only with a granularity)."""
    if args.recompute_granularity == "full":
        name = f"full-{args.recompute_method}{args.recompute_num_layers}"
    else:
        modules = args.recompute_modules or ["core_attn"]
        name = "selective" + ("" if modules == ["core_attn"] else "-" + "-".join(modules))
    return name + ("+activations" if args.tsp_recompute_activations else "")


def tsp_layout(tsp_size: int, dp: int, args, num_layers: int) -> Layout:
    """TSP at `tsp_size` x `dp` data-parallel replicas in the recompute choice of the flags in
    `args`: a RECOMPUTE mode when every layer makes the same one, else per layer."""
    layers = flag_recomputes(args, num_layers)
    mode = next((mode for mode, choice in RECOMPUTE.items() if set(layers) == {choice}), None)
    if mode is not None:
        return Layout("tsp", tp=tsp_size, dp=dp, recompute=mode)
    return Layout("tsp", tp=tsp_size, dp=dp, recompute=_choice_name(args), layers=layers)


def unsupported(layout: Layout, cfg: Qwen3Config, S: int,
                flags: Flags = LAUNCHER) -> Optional[str]:
    """Why a layout cannot run this model and sequence (None when it can): TSP and one device
    by the launcher's own rules, so that a plan is never one pretrain_qwen3.py refuses."""
    if layout.scheme in ("tsp", "single"):
        return tsp_problem(cfg, layout.tp, S, world_size=layout.group_size * layout.dp,
                           flags=flags)
    return megatron_problem(cfg, layout.tp, layout.cp, S, flags)


def _modes(scheme: str) -> List[str]:
    """Recompute modes the planner models: TSP's, Megatron's none and full (the benchmark's
    context-parallel model keeps everything)."""
    return {"tsp": list(RECOMPUTE), "cp": ["none"]}.get(scheme, ["none", "full"])


def candidate_layouts(gpus: int, flags=None, num_layers: int = 0) -> List[Layout]:
    """Every scheme at every group size D dividing `gpus` (data parallel over gpus / D), in
    every recompute mode; with `flags` (args holding recompute flags) TSP in the choice they
    make for `num_layers` layers, the other schemes only where it is one of their modes."""
    out = [Layout("single", dp=gpus)]
    for D in range(2, gpus + 1):
        if gpus % D:
            continue
        dp = gpus // D
        out += [Layout("tsp", tp=D, dp=dp), Layout("tp", tp=D, dp=dp),
                Layout("tp-sp", tp=D, dp=dp), Layout("cp", cp=D, dp=dp)]
        out += [Layout("tp-cp", tp=T, cp=D // T, dp=dp) for T in range(2, D) if D % T == 0]
    if flags is None:
        return [dataclasses.replace(x, recompute=mode) for x in out for mode in _modes(x.scheme)]
    mode = tsp_layout(1, 1, flags, num_layers).recompute
    return [tsp_layout(x.tp, x.dp, flags, num_layers) if x.scheme == "tsp"
            else dataclasses.replace(x, recompute=mode)
            for x in out if x.scheme == "tsp" or mode in _modes(x.scheme)]


def plan(layout: Layout, cfg: Qwen3Config, S: int, b: int, e: int, gpu: GPUSpec,
         distributed_optimizer: bool, budget_bytes: float) -> Plan:
    memory = memory_bytes(layout, cfg, S, b, e, distributed_optimizer)
    transfers = transfer_bytes(layout, cfg, S, b, e, distributed_optimizer)
    sent = sum(s for s, _ in transfers.values())
    received = sum(r for _, r in transfers.values())
    step = max(sent, received) / gpu.link_bytes_per_s
    flops = hardware_flops_per_token(layout, cfg, S) * S * b / layout.group_size
    sequences = layout.dp * b
    return Plan(layout, memory, sent, received, step, step / sequences,
                flops / gpu.flops_per_s / sequences, memory.total <= budget_bytes)


def plans(cfg: Qwen3Config, S: int, gpus: int, gpu: str, b: int = 1, dtype: str = "bf16",
          distributed_optimizer: bool = False,
          memory_budget_bytes: Optional[float] = None, recompute_flags=None) -> List[Plan]:
    """Every supported layout and recompute mode (or the one `recompute_flags` choose: args
    holding the launcher's recompute flags), best first: those that fit (90% of the GPU's
    memory, or the budget given) by estimated time per sequence."""
    spec, e = GPUS[gpu], DTYPE_BYTES[dtype]
    budget = memory_budget_bytes or USABLE_MEMORY_FRACTION * spec.memory_bytes
    out = [plan(layout, cfg, S, b, e, spec, distributed_optimizer, budget)
           for layout in candidate_layouts(gpus, recompute_flags, cfg.num_layers)
           if unsupported(layout, cfg, S) is None]
    return sorted(out, key=lambda p: (not p.fits, p.time_s_per_sequence, p.memory.total))


def format_table(rows: List[Plan]) -> str:
    header = ("| layout | D | dp | params | grads | optimizer | activations | transient | "
              "total GB | fits | sent GB | recv GB | comm ms/seq | compute ms/seq |")
    lines = [header, "|" + "---|" * 14]
    for p in rows:
        m = p.memory
        lines.append(
            f"| {p.layout.name} | {p.layout.group_size} | {p.layout.dp} | "
            + " | ".join(f"{x / GB:.1f}" for x in (m.params, m.grads, m.optimizer,
                                                   m.activations, m.transient, m.total))
            + f" | {'yes' if p.fits else 'no'} | {p.sent / GB:.2f} | {p.received / GB:.2f} | "
            f"{1e3 * p.comm_s_per_sequence:.1f} | {1e3 * p.compute_s_per_sequence:.1f} |")
    return "\n".join(lines)


# Megatron's packed-document flags: accepted as pretrain_qwen3.py accepts them
PACKING_FLAGS = ("--reset-position-ids", "--reset-attention-mask", "--eod-mask-loss")


def main(argv: Optional[List[str]] = None) -> List[Plan]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_arguments(parser)
    add_rope_arguments(parser)  # YaRN changes no byte: accepted and carried in the config
    parser.add_argument("--seq-length", type=int, required=True)
    parser.add_argument("--gpus", type=int, required=True, help="GPUs of one node")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bf16")
    parser.add_argument("--distributed-optimizer", action="store_true")
    parser.add_argument("--memory-budget-gb", type=float,
                        help="per-GPU memory a plan may use (GB = 1e9 bytes); by default 90%% "
                             "of the GPU's")
    add_recompute_arguments(parser)
    for flag in PACKING_FLAGS:
        parser.add_argument(flag, action="store_true",
                            help="packed documents, as at launch: memory and bytes are one "
                                 "sequence's, the attention FLOPs at most one sequence's")
    args = parser.parse_args(argv)
    if args.gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {args.gpus}")
    if args.micro_batch_size < 1:
        raise ValueError(f"--micro-batch-size must be >= 1, got {args.micro_batch_size}")
    if args.memory_budget_gb is not None and args.memory_budget_gb <= 0:
        raise ValueError(f"--memory-budget-gb must be positive, got {args.memory_budget_gb}")
    cfg = model_config_from_args(args).replace(yarn=yarn_from_args(args))
    refuse(positions_problem(cfg, args.seq_length))
    budget = args.memory_budget_gb * GB if args.memory_budget_gb else None
    flags = args if recompute_given(args) else None
    rows = plans(cfg, args.seq_length, args.gpus, args.gpu, args.micro_batch_size, args.dtype,
                 args.distributed_optimizer, budget, flags)
    spec = GPUS[args.gpu]
    chosen = (f"; recompute {tsp_layout(1, 1, args, cfg.num_layers).recompute} (the flags'"
              "; layouts without it left out)" if flags else "")
    print(f"{args.gpus} x {args.gpu} ({spec.memory_bytes / GIB:.0f} GiB, {spec.link}); "
          f"{args.seq_length} tokens x micro-batch {args.micro_batch_size}, {args.dtype}"
          f"; GB = 1e9 bytes, per GPU; +MODE: what backward recomputes{chosen}\n")
    if any(getattr(args, flag[2:].replace("-", "_")) for flag in PACKING_FLAGS):
        print("packed documents: memory and bytes are those of one sequence (the document "
              "offsets cost no activation); compute is at most one sequence's, as attention "
              "stops at each document's start\n")
    print(format_table(rows))
    best = next((p for p in rows if p.fits), None)
    print("\nrecommended: " + (f"{best.layout.name} ({best.memory.total / GB:.1f} GB per GPU, "
                               f"{1e3 * best.comm_s_per_sequence:.1f} ms of communication and "
                               f"{1e3 * best.compute_s_per_sequence:.1f} ms of compute per "
                               f"sequence)" if best else "nothing fits; add GPUs or shorten the "
                               "sequence"))
    if unsupported(Layout("tsp", tp=args.gpus), cfg, 2 * args.gpus) is None:
        print(generation_line(cfg, args.seq_length, args.gpus, DTYPE_BYTES[args.dtype]))
    return rows
