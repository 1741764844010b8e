"""pretrain_qwen3.py's arguments: Megatron-LM's own flags plus --tsp-size and --model-size.

Megatron's parser reads the command line; then, before any process group or file is touched:
--model-size (or, with --use-checkpoint-args, the --load checkpoint) fills every shape flag not
given explicitly, Qwen3's architecture flags are set,
CPU-safe defaults are chosen when there is no GPU, the embedded corpus is used when no data flag
is given, --tsp-size takes Megatron's tensor-parallel slot, and every size is validated with a
message naming the flag.
"""

import argparse
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, Optional, Set

import torch

from megatron_tsp.layers.recompute import layer_recomputes
from megatron_tsp.config import PRESETS, Qwen3Config, qwen3_preset
from megatron_tsp.config_adapters import (
    POSITION_FLAG, QWEN3_ARCHITECTURE_ARGS, ROPE_FLAGS, SHAPE_FLAGS, UNTIE_FLAG, YARN_FLAGS,
    megatron_shape, qwen3_config_from_args)
from megatron_tsp.size_rules import group_problem, refuse, tsp_problem
from megatron_tsp.training.indexed_data import check_indexed_dataset, check_split_documents
from megatron_tsp.training.rope_flags import (
    check_rope_flags, rope_from_checkpoint, with_yarn_defaults)
from megatron_tsp.training.launch_checks import (
    check_blend, check_load, check_numerics, check_save, check_split, check_training)

EMBEDDED_DATA = Path(__file__).resolve().parents[1] / "data"

# flag -> Megatron dest of every flag a checkpoint's shape sets, its rotary embedding included
# (Megatron's own --use-checkpoint-args leaves the YaRN flags out)
_CHECKPOINT_SHAPE = {**{flag: dest for flag, (dest, _) in SHAPE_FLAGS.items()},
                     UNTIE_FLAG: "untie_embeddings_and_output_weights", **ROPE_FLAGS}
# flag -> (dest, value) defaults that differ from Megatron's
_QWEN3_DEFAULTS = {"--attention-dropout": ("attention_dropout", 0.0),
                   "--hidden-dropout": ("hidden_dropout", 0.0)}
# flag -> (dest, value): megatron-core's fused CUDA paths do not exist on CPU
_CPU_DEFAULTS = {
    "--distributed-backend": ("distributed_backend", "gloo"),
    "--transformer-impl": ("transformer_impl", "local"),
    "--use-cpu-initialization": ("use_cpu_initialization", True),
    "--no-gradient-accumulation-fusion": ("gradient_accumulation_fusion", False),
    "--no-persist-layer-norm": ("no_persist_layer_norm", True),
    "--no-masked-softmax-fusion": ("masked_softmax_fusion", False),
    "--no-bias-gelu-fusion": ("bias_gelu_fusion", False),
    "--no-bias-swiglu-fusion": ("bias_swiglu_fusion", False),
    "--no-bias-dropout-fusion": ("bias_dropout_fusion", False),
    "--no-rope-fusion": ("apply_rope_fusion", False),
    # one_logger, NVIDIA's internal metrics tracker, is not published: Megatron would only warn
    # with a link to an internal page
    "--no-one-logger": ("enable_one_logger", False),
}
# flag -> (dest, value): the embedded demo runs with no other flag at all
_DEMO_DEFAULTS = {
    "--micro-batch-size": ("micro_batch_size", 4),
    "--global-batch-size": ("global_batch_size", 8),
    "--train-iters": ("train_iters", 200),
    "--lr": ("lr", 3e-3),
    "--min-lr": ("min_lr", 3e-4),
    "--lr-decay-style": ("lr_decay_style", "cosine"),
    "--lr-warmup-iters": ("lr_warmup_iters", 10),
    "--log-interval": ("log_interval", 10),
    "--eval-interval": ("eval_interval", 100),
    "--eval-iters": ("eval_iters", 4),
}
# demo defaults another flag replaces: a sample-based run, another form of warmup
_DEMO_REPLACED_BY = {"--train-iters": ("--train-samples",),
                     "--lr-warmup-iters": ("--train-samples", "--lr-warmup-fraction",
                                           "--lr-warmup-samples")}
# shape flags that are numerics, not sizes: a checkpoint may be trained on with other values
_ARCHITECTURE_NUMERICS = ("--norm-epsilon", "--rotary-base", "--init-method-std",
                          "--max-position-embeddings")
# Megatron's activation-recompute flags that TSP's layers cannot honour (the others choose what
# they keep: layers/recompute.py)
_UNSUPPORTED_RECOMPUTE_FLAGS = {
    "--distribute-saved-activations": "TSP already keeps 1/D of every activation per rank",
    "--checkpoint-activations": "use --recompute-granularity (Megatron exits without training)",
}
# what Megatron's validate_args gives --split when --data-path comes without one
_MEGATRON_DEFAULT_SPLIT = "969, 30, 1"
_DATA_FLAGS = ("--mock-data", "--data-path", "--train-data-path", "--data-args-path",
               "--per-split-data-args-path")


def add_tsp_arguments(parser):
    """Megatron's extra_args_provider: the flags TSP adds."""
    group = parser.add_argument_group("TSP")
    group.add_argument("--tsp-size", type=int, default=1,
                       help="D: ranks of one TSP group; each keeps 1/D of every weight and of "
                            "every sequence (takes Megatron's tensor-parallel slot)")
    group.add_argument("--model-size", choices=sorted(PRESETS), default="tiny",
                       help="Qwen3 shape; every shape flag given explicitly overrides it")
    group.add_argument("--tsp-recompute-activations", action="store_true",
                       help="recompute the element-wise parts in backward (q/k RMSNorm and RoPE, "
                            "the SwiGLU activation) and keep only GEMM outputs; combines with "
                            "Megatron's --recompute-granularity / --recompute-modules")
    group.add_argument("--no-memory-check", action="store_true",
                       help="launch even if the planner predicts a peak per GPU over 90%% of "
                            "the device's memory (training/memory_check.py)")
    group.add_argument("--max-consecutive-nonfinite-iterations", type=int, default=5,
                       help="an iteration whose loss or gradients hold NaN/Inf is skipped, logged "
                            "and counted; this many in a row stop the job (1: stop at the first). "
                            "Replaces Megatron's --check-for-nan-in-loss-and-grad")
    group.add_argument("--debug-nonfinite-loss-iterations", type=int, nargs="+", default=None,
                       metavar="ITERATION",
                       help="testing aid: the last rank's loss is NaN at these iterations")
    # megatron-core 0.19.2 writes a bare '%' in a help text (--moe-paged-stash-buffer-size-
    # factor-cuda), on which argparse's --help raises; escaped, --help prints
    for action in parser._actions:
        if action.help:
            action.help = re.sub(r"%%|%(?!\()", lambda m: m.group().ljust(2, "%"),
                                 action.help)
    return parser


def parse_tsp_args(argv: Iterable[str], program: str = "pretrain_qwen3.py"):
    """Megatron's parse_args with the TSP flags, over `argv` rather than the sys.argv it reads."""
    from megatron.training.arguments import parse_args
    saved, sys.argv = sys.argv, [program, *map(str, argv)]
    try:
        return parse_args(add_tsp_arguments)
    finally:
        sys.argv = saved


def explicit_flags(argv: Iterable[str]) -> Set[str]:
    """The flags given, a negated YaRN flag under its positive name."""
    flags = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
    return {flag.replace("--no-yarn-", "--yarn-") for flag in flags}


def _reject_replaced_parallelism(args) -> None:
    refuse(group_problem(args.tsp_size, args.pipeline_model_parallel_size))
    # at --tsp-size 1 too: the TSP model has no context-parallel attention, so each rank of
    # the context group would train the whole sequence again
    if args.context_parallel_size != 1:
        raise ValueError("--context-parallel-size is not supported: TSP shards the sequence "
                         "itself (--tsp-size)")
    for flag in ("--num-layers-per-virtual-pipeline-stage",
                 "--num-virtual-stages-per-pipeline-rank"):
        if getattr(args, flag[2:].replace("-", "_")) is not None:
            raise ValueError(f"{flag} is not supported: the TSP model builds one model chunk "
                             "per pipeline stage")
    # at --tsp-size 1 too: the TSP group takes the slot, so Megatron's size would be reset to
    # 1 and the run would train as data parallel instead
    if args.tensor_model_parallel_size != 1:
        raise ValueError("--tensor-model-parallel-size is not supported: the TSP group takes "
                         "the tensor-parallel slot (--tsp-size)")
    if args.tsp_size == 1:
        return
    if args.sequence_parallel:
        raise ValueError("--sequence-parallel cannot be combined with --tsp-size > 1: "
                         "TSP already shards the sequence")


def _reject_unsupported_flags(args) -> None:
    """Megatron flags that TSP would accept and silently not honour."""
    if args.overlap_param_gather or args.overlap_param_gather_with_optimizer_step:
        raise ValueError("--overlap-param-gather is not supported: TSP reads its weights "
                         "outside the modules' forward, so Megatron DDP's forward pre-hooks, "
                         "which wait for the parameter all-gather, never fire and the step "
                         "would use stale weights")
    if args.allow_ambiguous_pad_tokens and args.reset_attention_mask:
        raise ValueError("--allow-ambiguous-pad-tokens cannot be combined with "
                         "--reset-attention-mask: Megatron's dataset turns a pad id equal to "
                         "the EOD id into 0 in the tokens, where the documents are read")
    for flag, why in _UNSUPPORTED_RECOMPUTE_FLAGS.items():
        if getattr(args, flag[2:].replace("-", "_"), None) not in (None, False):
            raise ValueError(f"{flag} is not supported: {why}")
    # Megatron ignores these without the granularity they belong to: the run would not do what
    # they say
    for flag, needs in (("--recompute-method", "full"), ("--recompute-num-layers", "full"),
                        ("--recompute-modules", "selective")):
        if getattr(args, flag[2:].replace("-", "_")) is not None \
                and args.recompute_granularity != needs:
            raise ValueError(f"{flag} needs --recompute-granularity {needs}")
    layer_recomputes(args, 1, args.tsp_recompute_activations)  # raises for what TSP cannot do


def _checkpoint_source(args):
    """(flag, directory) of the checkpoint the launch loads (--load, else
    --pretrained-checkpoint), or None."""
    from megatron_tsp.checkpoint import checkpoint_to_load
    return checkpoint_to_load(args.load, getattr(args, "pretrained_checkpoint", None))


def whole_checkpoint_args(args):
    """The Megatron args of the checkpoint the launch loads (_checkpoint_source), after its
    shard files are checked; None without a checkpoint."""
    from megatron_tsp.checkpoint import check_checkpoint_files, checkpoint_args
    source = _checkpoint_source(args)
    if source is None:
        return None
    check_checkpoint_files(source[1])
    return checkpoint_args(source[1])


def _shape_source(args, saved, config: Optional[Qwen3Config]) -> Dict[str, object]:
    """{dest: value} for the shape flags: the checkpoint's (`saved`, its args) with Megatron's
    --use-checkpoint-args (its vocabulary too), else `config`'s if given, else the --model-size
    preset's."""
    if args.use_checkpoint_args:
        if saved is None:
            raise ValueError(f"--use-checkpoint-args needs a checkpoint in --load, got "
                             f"{args.load}")
        saved = with_yarn_defaults(saved)
        missing = [dest for dest in [*_CHECKPOINT_SHAPE.values(), "vocab_size"]
                   if not hasattr(saved, dest)]
        if missing:
            raise ValueError(f"--use-checkpoint-args: the checkpoint in --load {args.load} does "
                             f"not record {', '.join(missing)}")
        shape = {dest: getattr(saved, dest) for dest in _CHECKPOINT_SHAPE.values()}
        # the unpadded vocabulary: a NullTokenizer run needs no --vocab-size
        shape["vocab_size"] = getattr(saved, "tsp_vocab_size", None) or saved.vocab_size
        return shape
    return megatron_shape(config or qwen3_preset(args.model_size))


def apply_shape(args, explicit: Set[str], saved, config: Optional[Qwen3Config]) -> None:
    shape = _shape_source(args, saved, config)
    if POSITION_FLAG in explicit and args.position_embedding_type == "rope":
        # plain RoPE asked for: a YaRN checkpoint's settings would be ignored (and refused)
        shape = {dest: value for dest, value in shape.items()
                 if dest not in {yarn_dest for yarn_dest, _ in YARN_FLAGS.values()}}
    for flag, dest in _CHECKPOINT_SHAPE.items():
        if flag not in explicit and dest in shape:
            setattr(args, dest, shape[dest])
    for dest, value in QWEN3_ARCHITECTURE_ARGS.items():
        setattr(args, dest, value)
    for flag, (dest, value) in _QWEN3_DEFAULTS.items():
        if flag not in explicit:
            setattr(args, dest, value)
    if args.seq_length is None:
        args.seq_length = 256 if args.model_size == "tiny" else 4096
    if args.eval_interval is None:  # Megatron-LM's long-standing default, which 0.19 dropped
        args.eval_interval = 1000
    if "--vocab-size" not in explicit and args.vocab_size is None:
        args.vocab_size = shape["vocab_size"]
    check_rope_flags(args)


def _apply_cpu_defaults(args, explicit: Set[str]) -> None:
    if torch.cuda.is_available():
        return
    for flag, (dest, value) in _CPU_DEFAULTS.items():
        if flag not in explicit:
            setattr(args, dest, value)


def data_parallel_size(args, world_size: int) -> int:
    """Megatron's: the ranks of `world_size` left over by the model-parallel groups."""
    model_parallel = args.tsp_size * args.pipeline_model_parallel_size * args.context_parallel_size
    return max(1, world_size // max(1, model_parallel))


def _apply_data_defaults(args, explicit: Set[str], data_parallel_size: int) -> None:
    """No data flag: the embedded corpus and tokenizer, and training defaults for a first run.
    --mock-data without a tokenizer: Megatron's NullTokenizer over the model's vocabulary."""
    if not explicit & set(_DATA_FLAGS):
        for flag, (dest, value) in _DEMO_DEFAULTS.items():
            if flag not in explicit and not explicit & set(_DEMO_REPLACED_BY.get(flag, ())):
                setattr(args, dest, value)
        _fit_demo_defaults(args, explicit, data_parallel_size)
        args.data_path = [str(embedded_dataset_prefix())]
        args.tokenizer_type = args.tokenizer_type or "HuggingFaceTokenizer"
        args.tokenizer_model = args.tokenizer_model or str(EMBEDDED_DATA / "tokenizer")
        args.split = args.split or "98,2,0"
    elif args.mock_data and args.tokenizer_type is None:
        args.tokenizer_type = "NullTokenizer"


def _fit_demo_defaults(args, explicit: Set[str], data_parallel_size: int) -> None:
    """The demo's defaults yield to the values given with them where Megatron would assert: a
    warmup shorter than the decay, a minimum learning rate under --lr, a global batch of whole
    micro-batches on every data-parallel rank."""
    decay = args.lr_decay_iters or args.train_iters
    if "--lr-warmup-iters" not in explicit and decay:
        args.lr_warmup_iters = max(0, min(args.lr_warmup_iters, decay - 1))
    if "--lr" in explicit and "--min-lr" not in explicit:
        args.min_lr = args.lr / 10
    step = args.micro_batch_size * data_parallel_size
    if "--global-batch-size" not in explicit and step > 0:
        args.global_batch_size = -(-args.global_batch_size // step) * step


def _check_data_paths(args) -> None:
    if args.tokenizer_model is not None and not Path(args.tokenizer_model).exists():
        raise ValueError(f"--tokenizer-model {args.tokenizer_model}: no such file or directory")
    if args.mock_data or args.data_path == [str(embedded_dataset_prefix())]:
        return
    divided = []  # (prefix, documents) of the --data-path datasets --split divides
    for flag in ("data_path", "train_data_path", "valid_data_path", "test_data_path"):
        check_blend(f"--{flag.replace('_', '-')}", getattr(args, flag, None) or [])
        for entry in getattr(args, flag, None) or []:
            try:
                float(entry)  # blend weights stand between the paths
                continue
            except ValueError:
                pass
            sequences = check_indexed_dataset(entry, f"--{flag.replace('_', '-')}")
            if flag == "data_path":
                divided.append((entry, sequences))
    for entry, sequences in divided:
        check_split_documents(entry, sequences, args.split or _MEGATRON_DEFAULT_SPLIT)


def check_checkpoint_shape(args, saved, explicit: Set[str]) -> None:
    """A checkpoint to resume (--load's, else --pretrained-checkpoint's) must be whole and have
    the shape the arguments describe (`saved`: its args when read already); its rotary
    embedding is taken by rope_from_checkpoint."""
    if saved is None:
        saved = whole_checkpoint_args(args)
    if saved is None:
        return
    where = " ".join(_checkpoint_source(args))
    for flag, (dest, _) in SHAPE_FLAGS.items():
        if flag in _ARCHITECTURE_NUMERICS:
            continue
        ours, theirs = getattr(args, dest), getattr(saved, dest, None)
        if theirs is not None and theirs != ours:
            raise ValueError(f"{flag}: the checkpoint in {where} has {theirs}, the arguments "
                             f"give {ours}")
    if saved.untie_embeddings_and_output_weights != args.untie_embeddings_and_output_weights:
        raise ValueError(f"--untie-embeddings-and-output-weights: the checkpoint in {where} has "
                         f"{saved.untie_embeddings_and_output_weights}, the arguments give "
                         f"{args.untie_embeddings_and_output_weights}")


def embedded_dataset_prefix() -> Path:
    """Where the embedded corpus is tokenized to (built on first use by prepare_embedded_data),
    named by the embedded tokenizer, so that a rebuilt one never reads what an earlier one wrote."""
    cache = Path(os.environ.get("MEGATRON_TSP_CACHE", Path.home() / ".cache" / "megatron_tsp"))
    digest = hashlib.sha256((EMBEDDED_DATA / "tokenizer" / "tokenizer.json").read_bytes())
    return cache / f"embedded_{digest.hexdigest()[:12]}" / "shakespeare_tragedies_text_document"


def prepare_args(args, argv: Iterable[str], config: Optional[Qwen3Config] = None) -> None:
    """Turn parsed Megatron args into a TSP Qwen3 run; raise ValueError naming the flag for any
    combination that cannot run. Starts no process group and writes no file (it reads the
    datasets' headers and the --load checkpoint's metadata). `config`, when given, is the shape
    in place of --model-size's (explicit shape flags still win)."""
    explicit = explicit_flags(argv)
    _reject_replaced_parallelism(args)
    _reject_unsupported_flags(args)
    check_load(args)
    # read first only when the shape comes from it: other flag errors are reported before it
    saved = whole_checkpoint_args(args) if args.use_checkpoint_args else None
    apply_shape(args, explicit, saved, config)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    # the vocabulary is the tokenizer's when no flag gives it, and the rotary embedding may
    # still come from the checkpoint (below): no size rule concerns either
    plain_rope = argparse.Namespace(**{**vars(args), **dict.fromkeys(ROPE_FLAGS.values()),
                                       "position_embedding_type": "rope"})
    refuse(tsp_problem(qwen3_config_from_args(plain_rope, vocab_size=args.vocab_size or 1),
                       args.tsp_size, seq_length=args.seq_length, world_size=world_size,
                       pipeline_size=args.pipeline_model_parallel_size))
    check_numerics(args)
    rope_from_checkpoint(args, saved or whole_checkpoint_args(args), explicit)
    _apply_cpu_defaults(args, explicit)
    data_parallel = data_parallel_size(args, world_size)
    _apply_data_defaults(args, explicit, data_parallel)
    check_split(args)
    _check_data_paths(args)
    check_training(args, data_parallel)
    args.tensor_model_parallel_size = args.tsp_size
    # Megatron's default distributed-optimizer checkpoint reshards over data parallel only; TSP
    # users change --tsp-size with their cluster, so the state is saved fully reshardable
    args.dist_ckpt_optim_fully_reshardable = True
    if args.save and args.save_interval is None:
        raise ValueError("--save needs --save-interval (iterations between checkpoints)")
    check_save(args)
    if args.max_consecutive_nonfinite_iterations < 1:
        raise ValueError("--max-consecutive-nonfinite-iterations must be >= 1, got "
                         f"{args.max_consecutive_nonfinite_iterations}")
    # training/nonfinite.py skips such iterations; Megatron's check would abort at the first
    args.check_for_nan_in_loss_and_grad = False
    # TSP attention is causal by construction: Megatron's dataset would build an S x S mask per
    # sample, move it to the device and broadcast it to every TSP rank, for nothing
    args.create_attention_mask_in_dataloader = False
    check_checkpoint_shape(args, saved, explicit)
