"""Whether a launch fits its GPUs' memory, decided before any model is built: pretrain_qwen3.py
runs check_launch_memory right after the argument checks, before the data, Megatron's own checks
and the process groups.

The planner (megatron_tsp.planner.memory) predicts the peak bytes per GPU of the launch's TSP
step from its real settings: the model shape (the --model-size preset, explicit shape flags, or
the --load checkpoint's with --use-checkpoint-args), --seq-length, --micro-batch-size, the
precision (--bf16, --fp16 or fp32), --tsp-size, the data-parallel size, --use-distributed-optimizer
and the recompute flags (through the TSP layers' own layer_recomputes). A launch whose prediction
exceeds the planner's USABLE_MEMORY_FRACTION of the device's memory (the rest is the CUDA
context's, NCCL's and the allocator's) is refused with the flags predicted to fit, each with its
peak; --no-memory-check skips the check.
On CPU (gloo, no CUDA device) the check does not apply: the planner models GPU kernels and memory.
Not modelled, so not checked (a line says so): pipeline stages (--pipeline-model-parallel-size
> 1) and Megatron's --context-parallel-size. The optimizer state is Adam's (Megatron's default);
with --optimizer sgd, which keeps one fp32 moment fewer, the prediction errs high.
"""

import copy
from dataclasses import dataclass
from typing import Iterator, List, Tuple

import torch

from megatron_tsp.config_adapters import qwen3_config_from_args
from megatron_tsp.planner.memory import MemoryEstimate, memory_bytes
from megatron_tsp.planner.plan import DTYPE_BYTES, GB, USABLE_MEMORY_FRACTION, tsp_layout
from megatron_tsp.size_rules import tsp_problem
from megatron_tsp.training.arguments import data_parallel_size

SKIP_FLAG = "--no-memory-check"
FULL_RECOMPUTE = "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1"
# Megatron's recompute flags as a launch without any has them: an alternative replaces them
_NO_MEGATRON_RECOMPUTE = dict(recompute_granularity=None, recompute_method=None,
                              recompute_num_layers=None, recompute_modules=None,
                              recompute_activations=False)


@dataclass(frozen=True)
class Prediction:
    """The planner's peak per GPU of the launch with `flags` changed."""

    flags: str
    """The flags given instead of the launch's own (of the same kind: recompute, --tsp-size)."""
    memory: MemoryEstimate


def _dtype(args) -> str:
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def predicted_memory(args) -> MemoryEstimate:
    """The planner's peak per GPU of the launch `args` describe (after prepare_args)."""
    cfg = qwen3_config_from_args(args, vocab_size=args.vocab_size)
    dp = data_parallel_size(args, args.world_size)
    layout = tsp_layout(args.tsp_size, dp, args, cfg.num_layers)
    return memory_bytes(layout, cfg, args.seq_length, args.micro_batch_size,
                        DTYPE_BYTES[_dtype(args)], args.use_distributed_optimizer)


def _changed(args, **changes):
    changed = copy.copy(args)
    vars(changed).update(changes)
    return changed


def _recompute_alternatives(args) -> Iterator[List[Tuple[str, dict]]]:
    """Families of (flags, the args they set), least recomputed first: TSP's element-wise
    recompute, Megatron's selective modules, full recompute of the first N layers (block, fewest
    first) and of every layer."""
    yield [("--tsp-recompute-activations", dict(tsp_recompute_activations=True))]
    yield [("--recompute-granularity selective",
            dict(_NO_MEGATRON_RECOMPUTE, recompute_granularity="selective"))]
    yield [("--recompute-granularity selective --recompute-modules core_attn mlp",
            dict(_NO_MEGATRON_RECOMPUTE, recompute_granularity="selective",
                 recompute_modules=["core_attn", "mlp"]))]
    yield [(f"--recompute-granularity full --recompute-method block --recompute-num-layers {n}",
            dict(_NO_MEGATRON_RECOMPUTE, recompute_granularity="full", recompute_method="block",
                 recompute_num_layers=n)) for n in range(1, args.num_layers)]
    yield [(FULL_RECOMPUTE, dict(_NO_MEGATRON_RECOMPUTE, recompute_granularity="full",
                                 recompute_method="uniform", recompute_num_layers=1))]


def _layout_alternatives(args) -> Iterator[List[Tuple[str, dict]]]:
    """Larger TSP groups the size rules allow on the same ranks (smallest first), and the
    distributed optimizer where there is data parallelism to shard its state over."""
    cfg = qwen3_config_from_args(args, vocab_size=args.vocab_size)
    yield [(f"--tsp-size {size}", dict(tsp_size=size))
           for size in range(args.tsp_size + 1, args.world_size + 1)
           if tsp_problem(cfg, size, seq_length=args.seq_length, world_size=args.world_size,
                          pipeline_size=args.pipeline_model_parallel_size) is None]
    if data_parallel_size(args, args.world_size) > 1 and not args.use_distributed_optimizer:
        yield [("--use-distributed-optimizer", dict(use_distributed_optimizer=True))]


def fitting_alternatives(args, usable: float) -> List[Prediction]:
    """What the launch could give instead of its flags of one kind, predicted to fit in
    `usable` bytes: of each family the first that fits (fewer recomputed layers and smaller
    groups run faster)."""
    out = []
    for family in [*_recompute_alternatives(args), *_layout_alternatives(args)]:
        for flags, changes in family:
            memory = predicted_memory(_changed(args, **changes))
            if memory.total <= usable:
                out.append(Prediction(flags, memory))
                break
    return out


def _describe(memory: MemoryEstimate) -> str:
    parts = ("params", "grads", "optimizer", "activations", "transient")
    return (f"{memory.total / GB:.1f} GB per GPU ("
            + ", ".join(f"{part} {getattr(memory, part) / GB:.1f}" for part in parts) + ")")


def _launch(args) -> str:
    dp = data_parallel_size(args, args.world_size)
    return (f"--tsp-size {args.tsp_size} x {dp} data-parallel, "
            f"{args.seq_length} tokens x micro-batch {args.micro_batch_size}, {_dtype(args)}"
            f"{', distributed optimizer' if args.use_distributed_optimizer else ''}")


def check_memory(args, device_bytes: int, device: str = "the GPU") -> str:
    """The line to print for a launch (`args` after prepare_args) on a device of `device_bytes`;
    raises ValueError, naming the flags predicted to fit, when the planner's peak exceeds
    USABLE_MEMORY_FRACTION of it."""
    if args.no_memory_check:
        return f"memory check skipped ({SKIP_FLAG})"
    for flag, value in (("--pipeline-model-parallel-size", args.pipeline_model_parallel_size),
                        ("--context-parallel-size", args.context_parallel_size)):
        if value > 1:
            return (f"memory check: not applied with {flag} {value} (the planner does not "
                    "model it)")
    usable = USABLE_MEMORY_FRACTION * device_bytes
    memory = predicted_memory(args)
    where = (f"{usable / GB:.1f} GB usable on {device} ({USABLE_MEMORY_FRACTION:.0%} of "
             f"{device_bytes / GB:.1f} GB)")
    if memory.total <= usable:
        return f"memory check: {_launch(args)}: the planner predicts {_describe(memory)}, " \
               f"within the {where}"
    fits = fitting_alternatives(args, usable)
    state = memory.params + memory.grads + memory.optimizer
    # what no sequence length changes: then only more GPUs per model (or sharded state) help
    remedy = ("the model state alone (params, grads, optimizer) exceeds it: add GPUs (a larger "
              "--tsp-size, or data parallel with --use-distributed-optimizer)" if state > usable
              else "add GPUs (a larger --tsp-size) or shorten --seq-length")
    offer = ("predicted to fit, each in place of the launch's flags of its kind:\n" + "\n".join(
        f"  {p.flags}: {p.memory.total / GB:.1f} GB" for p in fits) if fits else
             "no single change of recompute, --tsp-size or optimizer is predicted to fit: "
             + remedy)
    raise ValueError(f"{_launch(args)}: the planner predicts {_describe(memory)}, over the "
                     f"{where}; {offer}\n({SKIP_FLAG} skips this check)")


def check_launch_memory(args) -> None:
    """pretrain_qwen3.py's pre-flight check against this rank's GPU (`args` after
    prepare_args); rank 0 prints the outcome. No CUDA device: nothing to check."""
    if not torch.cuda.is_available():
        return
    properties = torch.cuda.get_device_properties(args.local_rank)
    line = check_memory(args, properties.total_memory, f"cuda:{args.local_rank}")
    if args.rank == 0:
        print(line, flush=True)
