"""Launch checks for inputs Megatron accepts and that fail only later, or never visibly: a split
that trains on nothing, numerics that make every update non-finite, checkpoint paths that fail
at the first save or silently start from random weights, batch sizes, intervals, schedules,
optimizer and precision values and blend weights that fail once the process groups exist or
are ignored. Each raises ValueError naming the flag as typed; none writes or creates anything
(issue 11). What Megatron's own checks refuse is reported by flag_errors."""

import math
import os
from pathlib import Path

import torch


def _train_weight_used(args) -> bool:
    """Whether --split decides the training data: a --data-path blend (or its args file), not
    mock data (Megatron then splits "1,1,1") nor per-split paths, and a run that trains."""
    trains = bool(args.train_iters or args.train_samples) and not getattr(args, "skip_train",
                                                                          False)
    blend = bool(args.data_path) or bool(getattr(args, "data_args_path", None))
    return trains and blend and not args.mock_data


def check_split(args) -> None:
    """--split: up to three comma-separated non-negative weights (train, valid, test) that are
    not all zero, with a train weight > 0 when the split decides what is trained on, and no
    per-split data paths."""
    if args.split is None:
        return
    per_split = [flag for flag in ("--train-data-path", "--valid-data-path", "--test-data-path")
                 if _value(args, flag)]
    if per_split:  # Megatron asserted "split and blend_per_split are incompatible", late
        raise ValueError(f"--split cannot be combined with {per_split[0]}: each split has its "
                         "own data")
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


# Values Megatron's validate_args lets through that fail after the process groups start (in the
# scheduler, the optimizer, the data loader, the training loop) or train on silently wrong. Found
# by running every numeric flag of these kinds at 0, -1, NaN and Inf through the entry point.

# counts Megatron divides by, builds samplers of or seeds numpy with: flag -> least value
_AT_LEAST = {"--micro-batch-size": 1, "--global-batch-size": 1, "--eval-micro-batch-size": 1,
             "--eval-global-batch-size": 1, "--train-iters": 1, "--train-samples": 1,
             "--lr-decay-iters": 1, "--lr-decay-samples": 1, "--lr-wsd-decay-iters": 1,
             "--lr-wsd-decay-samples": 1, "--lr-warmup-iters": 0, "--lr-warmup-samples": 0,
             "--eval-iters": 0, "--num-workers": 0, "--make-vocab-size-divisible-by": 1,
             "--vocab-size": 1, "--seed": 1, "--context-parallel-size": 1}
# the loop's `iteration % interval`: 0 divides by zero, a negative one fires at the wrong steps
_INTERVALS = ("--log-interval", "--eval-interval", "--tensorboard-log-interval",
              "--log-memory-interval", "--check-weight-hash-across-dp-replicas-interval",
              "--gpu-sniff-test-interval", "--save-retain-interval", "--save-params-interval",
              "--save-activations-interval", "--save-tokens-per-expert-interval",
              "--save-wgrads-interval", "--save-dgrads-interval")
# where Megatron reads 0 as "off" (a negative exit duration stops after the first iteration)
_ZERO_IS_OFF = ("--save-interval", "--non-persistent-save-interval", "--exit-interval",
                "--train-sync-interval", "--manual-gc-interval", "--exit-duration-in-mins")
# flag -> (lowest, whether the lowest is allowed, upper bound excluded or None)
_REALS = {"--lr": (0, True, None), "--min-lr": (0, True, None),
          "--lr-warmup-init": (0, True, None), "--lr-warmup-fraction": (0, True, 1),
          "--weight-decay": (0, True, None), "--start-weight-decay": (0, True, None),
          "--end-weight-decay": (0, True, None), "--init-method-std": (0, True, None)}
_OPTIMIZER_REALS = {"adam": {"--adam-beta1": (0, True, 1), "--adam-beta2": (0, True, 1),
                             "--adam-eps": (0, True, None)},
                    "sgd": {"--sgd-momentum": (0, True, None)}}
# --fp16's loss scaler, which Megatron asserts on once the model is built (--loss-scale 0: the
# dynamic scaler)
_FP16_REALS = {"--loss-scale": (0, True, None), "--initial-loss-scale": (0, False, None),
               "--min-loss-scale": (0, False, None), "--loss-scale-window": (0, False, None),
               "--hysteresis": (0, False, None)}
# tokenizer type -> the flags naming its files
_TOKENIZER_FILES = {"HuggingFaceTokenizer": ("--tokenizer-model",),
                    "SentencePieceTokenizer": ("--tokenizer-model",),
                    "GPTSentencePieceTokenizer": ("--tokenizer-model",),
                    "Llama2Tokenizer": ("--tokenizer-model",),
                    "TikTokenizer": ("--tokenizer-model",), "SFTTokenizer": ("--tokenizer-model",),
                    "GPT2BPETokenizer": ("--vocab-file", "--merge-file"),
                    "BertWordPieceCase": ("--vocab-file",),
                    "BertWordPieceLowerCase": ("--vocab-file",)}


def _weight(entry: str):
    try:
        return float(entry)
    except ValueError:
        return None


def check_blend(flag: str, entries) -> None:
    """A data-path list is dataset paths only, or weight/path pairs with finite weights >= 0, not
    all 0: Megatron reads a list of odd length as paths only (a missing path or weight made a
    weight a dataset name), and NaN, negative or all-zero weights a NaN sampling distribution."""
    weights = [_weight(entry) for entry in entries]
    if all(weight is None for weight in weights):
        return
    pairs = len(entries) % 2 == 0 and None not in weights[0::2]
    if not pairs or any(weight is not None for weight in weights[1::2]):
        raise ValueError(f"{flag} {' '.join(entries)}: give dataset paths only, or weight/path "
                         "pairs (e.g. 0.7 PATH_A 0.3 PATH_B)")
    if not all(math.isfinite(w) and w >= 0 for w in weights[0::2]) or not any(weights[0::2]):
        raise ValueError(f"{flag} {' '.join(entries)}: the blend weights must be finite numbers "
                         ">= 0, not all 0")


def _value(args, flag: str):
    return getattr(args, flag[2:].replace("-", "_"), None)


def _check_real(args, flag: str, bounds) -> None:
    low, low_allowed, high = bounds
    value = _value(args, flag)
    if value is None:
        return
    ok = math.isfinite(value) and (value >= low if low_allowed else value > low)
    if not ok or (high is not None and value >= high):
        what = f"{'>=' if low_allowed else '>'} {low}"
        what = f"in [{low}, {high})" if high is not None else what
        raise ValueError(f"{flag} must be a finite number {what}, got {value}")


def _check_counts(args) -> None:
    for flag, low in [*_AT_LEAST.items(), *((flag, 1) for flag in _INTERVALS),
                      *((flag, 0) for flag in _ZERO_IS_OFF)]:
        value = _value(args, flag)
        if value is not None and value < low:
            off = " (0: off)" if flag in _ZERO_IS_OFF else ""
            raise ValueError(f"{flag} must be an integer >= {low}{off}, got {value}")


def _check_precision(args) -> None:
    for flag, value in (("--fp8-format", args.fp8), ("--fp4-format", args.fp4)):
        if value:  # Megatron ran in the parameters' precision and said nothing
            raise ValueError(f"{flag} is not supported: TSP's layers multiply in the parameters' "
                             "precision (fp32, --bf16 or --fp16)")
    if args.fp16 and args.bf16:
        raise ValueError("--fp16 and --bf16 cannot be combined: choose one parameter precision")
    if args.fp16 and not args.loss_scale and args.min_loss_scale > args.initial_loss_scale:
        raise ValueError(f"--min-loss-scale {args.min_loss_scale} must not exceed "
                         f"--initial-loss-scale {args.initial_loss_scale}")


def _check_batches(args, data_parallel_size: int) -> None:
    if args.rampup_batch_size is not None:
        raise ValueError("--rampup-batch-size is not supported: Megatron 0.19 ignores it, every "
                         "iteration would use --global-batch-size")
    if args.micro_batch_size is None:
        return
    step = args.micro_batch_size * data_parallel_size
    if args.global_batch_size is not None and args.global_batch_size % step:
        raise ValueError(f"--global-batch-size {args.global_batch_size} must be a multiple of "
                         f"--micro-batch-size {args.micro_batch_size} x data-parallel size "
                         f"{data_parallel_size} (= {step})")
    global_batch = args.global_batch_size or step
    if args.train_samples and args.train_samples < global_batch:
        raise ValueError(f"--train-samples {args.train_samples} is less than one global batch "
                         f"({global_batch}): Megatron would train 0 iterations")


def _check_schedule(args) -> None:
    """Megatron's learning-rate scheduler asserts these once the optimizer is built."""
    for flag in ("--min-lr", "--lr-warmup-init"):
        if args.lr is not None and _value(args, flag) > args.lr:
            raise ValueError(f"{flag} {_value(args, flag)} must not exceed --lr {args.lr}")
    if args.train_samples:
        warmup, decay = ("--lr-warmup-samples", "--lr-decay-samples"), "--train-samples"
    else:
        warmup, decay = ("--lr-warmup-iters", "--lr-decay-iters"), "--train-iters"
    steps = _value(args, warmup[1]) or _value(args, decay)
    if steps is not None and _value(args, warmup[0]) >= steps:
        source = warmup[1] if _value(args, warmup[1]) else decay
        raise ValueError(f"{warmup[0]} {_value(args, warmup[0])} must be smaller than {source} "
                         f"{steps}: the learning rate decays after the warmup")
    if args.lr_decay_style == "WSD" and not (args.lr_wsd_decay_iters
                                             or args.lr_wsd_decay_samples):
        raise ValueError("--lr-decay-style WSD needs --lr-wsd-decay-iters (or "
                         "--lr-wsd-decay-samples): the annealing phase's length")
    if args.weight_decay_incr_style != "constant" and None not in (args.start_weight_decay,
                                                                   args.end_weight_decay):
        if args.end_weight_decay < args.start_weight_decay:
            raise ValueError(f"--end-weight-decay {args.end_weight_decay} must not be smaller "
                             f"than --start-weight-decay {args.start_weight_decay}")


def _check_tokenizer(args) -> None:
    if args.tokenizer_type is None and not args.mock_data:
        raise ValueError("--tokenizer-type is required with a --data-path (e.g. "
                         "HuggingFaceTokenizer with --tokenizer-model)")
    for flag in _TOKENIZER_FILES.get(args.tokenizer_type, ()):
        if not _value(args, flag):
            raise ValueError(f"--tokenizer-type {args.tokenizer_type} needs {flag}")


def check_training(args, data_parallel_size: int) -> None:
    """Batch sizes, iteration counts, intervals, learning-rate schedule, optimizer and precision
    values, and the tokenizer's files, where given."""
    _check_counts(args)
    reals = {**_REALS, **_OPTIMIZER_REALS.get(args.optimizer, {}),
             **(_FP16_REALS if args.fp16 else {})}
    for flag, bounds in reals.items():
        _check_real(args, flag, bounds)
    for flag in ("--hidden-dropout", "--attention-dropout"):
        if _value(args, flag) != 0:  # any value trained exactly as 0 did
            raise ValueError(f"{flag} {_value(args, flag)} is not supported: TSP's layers apply "
                             "no dropout (Qwen3 trains without); give 0 or leave it out")
    if not args.clip_grad >= 0:  # Megatron clips only above 0: -1 and NaN turned clipping off
        raise ValueError(f"--clip-grad must be >= 0 (0 or inf: no clipping), got {args.clip_grad}")
    # Megatron seeds numpy (seeds < 2**32) with --seed + 100 x pipeline rank (+ 10 x data rank)
    last_seed = args.seed + 100 * (args.pipeline_model_parallel_size - 1)
    last_seed += 10 * (data_parallel_size - 1) if args.data_parallel_random_init else 0
    if last_seed >= 2**32:
        raise ValueError(f"--seed {args.seed} is too large: the last rank's seed, {last_seed}, "
                         "must be below 2**32")
    _check_precision(args)
    _check_batches(args, data_parallel_size)
    if not args.skip_train:
        _check_schedule(args)
    _check_tokenizer(args)


def check_required(args) -> None:
    """What a training launch needs beyond valid values, and prepare_args' other callers (the
    checkpoint converter, shape-only callers) do not give: Megatron asserts a missing
    --micro-batch-size bare, and fails on a missing length or --lr, or on --fp16 without CUDA,
    only once the process groups exist."""
    if args.micro_batch_size is None:
        raise ValueError("--micro-batch-size is required (sequences per rank per micro-step)")
    if not (args.train_iters or args.train_samples or args.skip_train):
        raise ValueError("--train-iters or --train-samples is required (how long to train)")
    if args.lr is None and not args.skip_train:
        raise ValueError("--lr is required (the peak learning rate)")
    if args.fp16 and not torch.cuda.is_available():
        raise ValueError("--fp16 needs a GPU: Megatron's loss scaler keeps its scale on CUDA "
                         "(on CPU, train in fp32 or with --bf16)")
