"""Launch checks for inputs Megatron accepts and that fail only later, or never visibly: a split
that trains on nothing, numerics that make every update non-finite, checkpoint paths that fail
at the first save or silently start from random weights. Each raises ValueError naming the flag
as typed; none writes or creates anything (issue 11)."""

import math
import os
from pathlib import Path


def _train_weight_used(args) -> bool:
    """Whether --split decides the training data: a --data-path blend (or its args file), not
    mock data (Megatron then splits "1,1,1") nor per-split paths, and a run that trains."""
    trains = bool(args.train_iters or args.train_samples) and not getattr(args, "skip_train",
                                                                          False)
    blend = bool(args.data_path) or bool(getattr(args, "data_args_path", None))
    return trains and blend and not args.mock_data


def check_split(args) -> None:
    """--split: up to three comma-separated non-negative weights (train, valid, test) that are
    not all zero, with a train weight > 0 when the split decides what is trained on."""
    if args.split is None:
        return
    parts = [part.strip() for part in str(args.split).split(",")]
    usage = ("--split takes up to three comma-separated non-negative weights for train, "
             "validation and test (e.g. 98,2,0)")
    if len(parts) > 3:
        raise ValueError(f"{usage}, got {args.split!r}: {len(parts)} parts")
    try:
        weights = [float(part) for part in parts]
    except ValueError:
        raise ValueError(f"{usage}, got {args.split!r}") from None
    if not all(math.isfinite(weight) and weight >= 0 for weight in weights):
        raise ValueError(f"{usage}, got {args.split!r}: a weight is negative or not finite")
    if not any(weights):
        raise ValueError(f"{usage}, got {args.split!r}: every weight is 0")
    if weights[0] == 0 and _train_weight_used(args):
        raise ValueError(f"--split {args.split}: the train weight is 0, so no sample would be "
                         "trained on and nothing saved; give the training split a weight > 0")


def check_numerics(args) -> None:
    """--norm-epsilon and --rotary-base values that make the updates non-finite (or, base 1,
    give every RoPE dimension the same frequency)."""
    epsilon = args.layernorm_epsilon
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"--norm-epsilon must be a finite number > 0, got {epsilon}: RMSNorm "
                         "divides by sqrt(mean(x^2) + epsilon): 0 or NaN for a row of (near) zeros")
    base = args.rotary_base
    if not (math.isfinite(base) and base > 1):
        raise ValueError(f"--rotary-base must be > 1, got {base}: RoPE's frequencies are "
                         "base^(-2i/d), non-finite for a base <= 0 and all equal for base 1")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_save(args) -> None:
    """--save must be a writable directory, or creatable: Megatron makes the missing
    directories at the first save, so the nearest existing ancestor must be a writable one."""
    if not args.save:
        return
    save = Path(os.path.abspath(args.save))
    if save.exists():
        if not save.is_dir():
            raise ValueError(f"--save {args.save}: exists and is not a directory")
        if not os.access(save, os.W_OK | os.X_OK):
            raise ValueError(f"--save {args.save}: the directory is not writable")
        return
    ancestor = _nearest_existing(save.parent)
    if not ancestor.is_dir():
        raise ValueError(f"--save {args.save}: cannot be created, {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"--save {args.save}: cannot be created, {ancestor} is not writable")


def check_load(args) -> None:
    """--load must be a directory: a missing path or a file would otherwise train from random
    weights after one warning. An empty directory, or --load naming the --save path (the
    resume-from-own-checkpoints idiom, created by the first save), keeps Megatron's behaviour:
    start from scratch."""
    if not args.load:
        return
    load = Path(args.load)
    if load.is_dir():
        return
    if load.exists():
        raise ValueError(f"--load {args.load}: is not a directory (a checkpoint is the "
                         "directory that holds latest_checkpointed_iteration.txt)")
    if args.save and os.path.abspath(args.load) == os.path.abspath(args.save):
        return
    raise ValueError(f"--load {args.load}: no such directory; to start fresh and resume from "
                     "this run's own checkpoints, give --save the same path")
