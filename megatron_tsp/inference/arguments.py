"""generate_qwen3.py's flags and inputs: Megatron's own (--load, --use-checkpoint-args, the
shape and tokenizer flags, --seed), --tsp-size and --model-size as in training, and the
generation flags. Every user error is a ValueError naming the flag or the file (and line),
raised before any process group starts or any weight is read.
"""

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional

import torch

from megatron_tsp.config import Qwen3Config
from megatron_tsp.config_adapters import qwen3_config_from_args
from megatron_tsp.conversion.convert import checkpoint_dtype
from megatron_tsp.inference.generate import Sampling
from megatron_tsp.layout import BLOCK, cached_tokens
from megatron_tsp.planner.inference import bytes_per_cached_token
from megatron_tsp.planner.transfers import Layout, params_per_rank
from megatron_tsp.size_rules import refuse, tsp_problem
from megatron_tsp.training.arguments import (
    add_tsp_arguments, apply_shape, check_checkpoint_shape, explicit_flags, whole_checkpoint_args)
from megatron_tsp.training.rope_flags import rope_from_checkpoint
from megatron_tsp.training.preprocess import load_tokenizer

GB = 1e9


def add_generate_arguments(parser):
    add_tsp_arguments(parser)
    group = parser.add_argument_group("generation")
    group.add_argument("--prompt", help="the prompt text")
    group.add_argument("--prompt-file", help="a file whose whole text is the prompt")
    group.add_argument("--input", help='JSONL, one prompt a line: {"prompt": text} or '
                                       '{"prompt_ids": [token ids]}')
    group.add_argument("--output", help='JSONL written by rank 0, one line per prompt: '
                                        '{"prompt", "text", "tokens"}')
    group.add_argument("--max-new-tokens", type=int, default=64)
    group.add_argument("--temperature", type=float, default=0.0,
                       help="0 (the default): greedy; > 0: sample from softmax(logits / T)")
    group.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest")
    group.add_argument("--top-p", type=float, default=1.0,
                       help="sample among the likeliest tokens whose probability reaches p")
    group.add_argument("--stop", nargs="+", default=[], metavar="TEXT",
                       help="stop once the generated text contains one of these (the "
                            "tokenizer's end-of-document token always stops)")
    group.add_argument("--max-memory-gb", type=float, default=None,
                       help="refuse to start when a rank's weight shards and KV cache would "
                            "exceed this many GB (1e9 bytes)")
    group.add_argument("--kv-block-size", type=int, default=BLOCK,
                       help="generated tokens cached together on one rank")
    return parser


def parse_generate_args(argv: Iterable[str]):
    """Megatron's parse_args with the TSP and generation flags, over `argv`."""
    from megatron.training.arguments import parse_args
    saved, sys.argv = sys.argv, ["generate_qwen3.py", *map(str, argv)]
    try:
        return parse_args(add_generate_arguments)
    finally:
        sys.argv = saved


@dataclass
class Prompt:
    text: Optional[str]
    ids: List[int]
    where: str
    """The flag (and line) it came from, for messages."""


def _check_sampling(args) -> Sampling:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise ValueError(f"--top-k must be >= 0, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature == 0 and (args.top_k or args.top_p < 1):
        raise ValueError("--top-k and --top-p choose what to sample from: they need "
                         "--temperature > 0 (0 is greedy)")
    if args.kv_block_size < 1:
        raise ValueError(f"--kv-block-size must be >= 1, got {args.kv_block_size}")
    return Sampling(args.temperature, args.top_k, args.top_p, args.seed)


def _tokenizer_dir(args, saved) -> str:
    """--tokenizer-model, else the tokenizer/ directory import-hf writes beside the checkpoint,
    else the one the checkpoint was trained with."""
    if args.tokenizer_model:
        kind, directory = args.tokenizer_type, args.tokenizer_model
    elif (Path(args.load) / "tokenizer").is_dir():
        kind, directory = None, str(Path(args.load) / "tokenizer")
    elif getattr(saved, "tokenizer_model", None):
        kind, directory = saved.tokenizer_type, saved.tokenizer_model
    else:
        raise ValueError(f"no tokenizer: the checkpoint in --load {args.load} names none and "
                         "has no tokenizer/ directory; give --tokenizer-model DIR")
    if kind not in (None, "HuggingFaceTokenizer"):
        raise ValueError(f"--tokenizer-type {kind}: generation reads Hugging Face tokenizers "
                         "(--tokenizer-type HuggingFaceTokenizer --tokenizer-model DIR)")
    if not Path(directory).exists():
        raise ValueError(f"--tokenizer-model {directory}: no such file or directory")
    return directory


def _read_prompts(args, tokenizer) -> List[Prompt]:
    given = [flag for flag in ("--prompt", "--prompt-file", "--input")
             if getattr(args, flag[2:].replace("-", "_")) is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of --prompt, --prompt-file and --input"
                         + (f" (got {', '.join(given)})" if given else ""))
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    if args.prompt is not None:
        return [Prompt(args.prompt, encode(args.prompt), "--prompt")]
    path = Path(args.prompt_file or args.input)
    if not path.is_file():
        raise ValueError(f"{given[0]} {path}: no such file")
    if args.prompt_file is not None:
        text = path.read_text(encoding="utf-8")
        return [Prompt(text, encode(text), f"--prompt-file {path}")]
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"--input {path}: line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not JSON ({error.msg})") from None
        if not isinstance(record, dict) or ("prompt" in record) == ("prompt_ids" in record):
            raise ValueError(f'{where}: needs exactly one of "prompt" (text) and "prompt_ids"')
        if "prompt" in record:
            if not isinstance(record["prompt"], str):
                raise ValueError(f'{where}: "prompt" must be text')
            prompts.append(Prompt(record["prompt"], encode(record["prompt"]), where))
        else:
            ids = record["prompt_ids"]
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise ValueError(f'{where}: "prompt_ids" must be a list of token ids')
            prompts.append(Prompt(None, ids, where))
    if not prompts:
        raise ValueError(f"--input {path}: no prompts")
    return prompts


def _check_prompts(prompts: List[Prompt], args, vocab: int) -> None:
    for prompt in prompts:
        if not prompt.ids:
            raise ValueError(f"{prompt.where}: the prompt is empty (no tokens)")
        bad = [i for i in prompt.ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"{prompt.where}: token id {bad[0]} is outside the vocabulary "
                             f"(0 .. {vocab - 1})")
        if len(prompt.ids) + args.max_new_tokens > args.max_position_embeddings:
            raise ValueError(
                f"{prompt.where}: {len(prompt.ids)} prompt tokens + --max-new-tokens "
                f"{args.max_new_tokens} exceed --max-position-embeddings "
                f"({args.max_position_embeddings})")


def memory_per_rank(config: Qwen3Config, prompt_tokens: int, max_new_tokens: int,
                    tsp_size: int, element_bytes: int, block: int) -> int:
    """Bytes of the weight shards and the fullest KV cache slice of one rank."""
    cache = max(cached_tokens(prompt_tokens, max_new_tokens - 1, tsp_size, block))
    weights = params_per_rank(config, Layout("tsp", tp=tsp_size))
    return (weights + cache * bytes_per_cached_token(config, 1)) * element_bytes


@dataclass
class GenerateRun:
    config: Qwen3Config
    prompts: List[Prompt]
    sampling: Sampling
    tokenizer: object
    dtype: torch.dtype


def prepare_generate_args(args, argv: Iterable[str]) -> GenerateRun:
    """Check every flag and input against the checkpoint; nothing is started or loaded."""
    if not args.load:
        raise ValueError("--load is required: the torch_dist checkpoint to generate from")
    saved = whole_checkpoint_args(args)
    if saved is None:
        raise ValueError(f"--load {args.load}: no checkpoint there (no "
                         "latest_checkpointed_iteration.txt)")
    if args.pipeline_model_parallel_size != 1:
        raise ValueError("--pipeline-model-parallel-size: generation runs one TSP group "
                         "(give 1)")
    explicit = explicit_flags(argv)
    apply_shape(args, explicit, saved if args.use_checkpoint_args else None, None)
    rope_from_checkpoint(args, saved, explicit)
    config = qwen3_config_from_args(
        args, getattr(saved, "tsp_vocab_size", None) or saved.padded_vocab_size)
    refuse(tsp_problem(config, args.tsp_size))
    check_checkpoint_shape(args, saved, explicit)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size != args.tsp_size:
        raise ValueError(f"--tsp-size ({args.tsp_size}) must equal the number of processes "
                         f"({world_size}): generation runs one TSP group")
    sampling = _check_sampling(args)
    tokenizer = load_tokenizer(_tokenizer_dir(args, saved))
    prompts = _read_prompts(args, tokenizer)
    _check_prompts(prompts, args, min(config.vocab_size, len(tokenizer)))
    dtype = checkpoint_dtype(saved)
    if args.max_memory_gb is not None:
        longest = max(len(p.ids) for p in prompts)
        needed = memory_per_rank(config, longest, args.max_new_tokens, args.tsp_size,
                                 dtype.itemsize, args.kv_block_size)
        if needed > args.max_memory_gb * GB:
            raise ValueError(
                f"--max-memory-gb {args.max_memory_gb}: a rank needs {needed / GB:.6f} GB for "
                f"its weight shards and the KV cache of {longest} + {args.max_new_tokens} "
                f"tokens at --tsp-size {args.tsp_size}; a larger --tsp-size divides both")
    return GenerateRun(config, prompts, sampling, tokenizer, dtype)
