"""Hugging Face Qwen3 <-> Megatron torch_dist checkpoints, streamed one tensor at a time.

import-hf writes a *release* checkpoint through Megatron's own save_checkpoint, so
`pretrain_qwen3.py --load DIR` starts from it at iteration 0 (no optimizer or RNG state) at any
--tsp-size, and plain Megatron-Core loads it at any tensor-parallel size: the layout is GPTModel's.
export-hf reads a checkpoint (any iteration, saved at any size) at D = 1 and writes sharded
safetensors that transformers loads offline. Peak memory is one copy of the model plus one
tensor (import) or one output shard (export). Neither writes into a non-empty directory unless
told to replace it whole (output_dir.py). Without a dtype, both write the weights in the dtype
they are in, so that a round trip is lossless.
"""

import os
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch

from megatron_tsp import parallel_state as ps
from megatron_tsp.conversion.hf_io import (
    CONFIG_DTYPES, HFCheckpointReader, copy_tokenizer_files, read_hf_config, write_hf_checkpoint)
from megatron_tsp.conversion.hf_qwen3 import hf_to_megatron, megatron_to_hf, tensor_count
from megatron_tsp.conversion.output_dir import output_directory
from megatron_tsp.config import Qwen3Config
from megatron_tsp.config_adapters import (
    hf_config_from_qwen3, qwen3_config_from_args, qwen3_config_from_hf)
from megatron_tsp.models.full_weights import load_full_tensors
from megatron_tsp.checkpoint import (check_checkpoint_files, checkpoint_args, checkpoint_dir,
                                     load_model_weights)
from megatron_tsp.models.qwen3 import TSPQwen3Model

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_MERGED_IMPORT = ("import-hf would point its latest_checkpointed_iteration.txt at the import, and "
                  "the next --load would start from the imported weights at iteration 0")
_MERGED_EXPORT = ("export-hf would replace config.json and leave in place the files the new "
                  "export does not write, stale shards among them")
_FLAGS = {torch_dtype: flag for flag, torch_dtype in DTYPES.items()}
_HF_NAMES = {torch_dtype: name for name, torch_dtype in CONFIG_DTYPES.items()}


def _log(message: str) -> None:
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(message, flush=True)


def _chosen_dtype(dtype: Optional[str], source_dtype: Callable[[], torch.dtype],
                  source: str) -> Tuple[torch.dtype, str]:
    """The dtype to write (--dtype, else the source's: `source_dtype()`) and how the log names
    it."""
    if dtype is not None:
        return DTYPES[dtype], f"{dtype} (--dtype)"
    try:
        torch_dtype = source_dtype()
    except ValueError as error:
        raise ValueError(f"{error}; --dtype chooses the dtype to write") from None
    return torch_dtype, f"{_FLAGS[torch_dtype]} ({source})"


def checkpoint_dtype(args) -> torch.dtype:
    """The dtype of a checkpoint's parameters, from the Megatron args it was saved with."""
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def _megatron_args(config: Qwen3Config, tsp_size: int, dtype: torch.dtype, save: str):
    """Megatron's global args for a model of this shape (save_checkpoint reads them)."""
    from megatron.training.arguments import validate_args
    from megatron.training.global_vars import set_global_variables
    from megatron_tsp.training.arguments import parse_tsp_args, prepare_args
    argv = ["--seq-length", 2 * tsp_size, "--tsp-size", tsp_size, "--mock-data",
            "--micro-batch-size", 1, "--train-iters", 1, "--lr", 0.0, "--save", save,
            "--save-interval", 1, "--no-save-optim", "--no-save-rng"]
    if dtype != torch.float32:
        argv.append("--bf16" if dtype == torch.bfloat16 else "--fp16")
    argv = [str(a) for a in argv]
    args = parse_tsp_args(argv, "convert_checkpoint.py")
    prepare_args(args, argv, config)  # the shape goes from the config to the args directly
    validate_args(args, {})
    set_global_variables(args, build_tokenizer=False)
    args.tsp_vocab_size = config.vocab_size
    return args


def import_hf(hf_path: str, save: str, tsp_size: int = 1, dtype: Optional[str] = None,
              verify: bool = False, overwrite: bool = False) -> None:
    with output_directory(save, "--save", overwrite, _MERGED_IMPORT,
                          [("--hf-path", hf_path)]) as written:
        _import(hf_path, written, tsp_size, dtype)
    torch.distributed.barrier()  # rank 0 has put the checkpoint in place before any rank reads it
    _log(f"saved a release checkpoint in {save}: pretrain_qwen3.py --load {save}")
    if verify:
        report_logit_difference(load_model(save), hf_path)


def _import(hf_path: str, save: Path, tsp_size: int, dtype: Optional[str]) -> None:
    from megatron.training.checkpointing import save_checkpoint
    config = qwen3_config_from_hf(read_hf_config(hf_path), str(Path(hf_path) / "config.json"))
    reader = HFCheckpointReader(hf_path)
    torch_dtype, described = _chosen_dtype(dtype, reader.dtype, "the source's dtype")
    _megatron_args(config, tsp_size, torch_dtype, str(save))
    ps.initialize_tsp(tsp_size)
    model = TSPQwen3Model(config, dtype=torch_dtype)
    total = tensor_count(config, hf=False)

    def tensors():
        for count, (name, tensor) in enumerate(hf_to_megatron(reader.get, config), 1):
            _log(f"  [{count}/{total}] {name} {tuple(tensor.shape)}")
            yield name, tensor.to(torch_dtype)

    _log(f"importing {hf_path} (Qwen3, {config.num_layers} layers, hidden "
         f"{config.hidden_size}) at --tsp-size {tsp_size} as {described}")
    load_full_tensors(model, tensors())
    save_checkpoint(0, [model], None, None, 0, release=True)
    if torch.distributed.get_rank() == 0:
        copy_tokenizer_files(Path(hf_path), save / "tokenizer")
    torch.distributed.barrier()


def load_model(load: str, tsp_size: Optional[int] = None) -> TSPQwen3Model:
    """A TSP model (current TSP group, initialised here at D = 1 if needed) from a checkpoint."""
    check_checkpoint_files(load)
    args = checkpoint_args(load)
    config = qwen3_config_from_args(args, getattr(args, "tsp_vocab_size", args.padded_vocab_size))
    if not torch.distributed.is_initialized():
        ps.initialize_tsp(tsp_size or 1)
    model = TSPQwen3Model(config, dtype=checkpoint_dtype(args))
    load_model_weights(model, str(checkpoint_dir(load)))
    return model


def export_hf(load: str, hf_path: str, dtype: Optional[str] = None, verify: bool = False,
              max_shard_bytes: int = 5 * 2 ** 30, overwrite: bool = False) -> None:
    with output_directory(hf_path, "--hf-path", overwrite, _MERGED_EXPORT,
                          [("--load", load)]) as written:
        model = _export(load, str(written), dtype, max_shard_bytes)
    _log(f"wrote {hf_path}: transformers.AutoModelForCausalLM.from_pretrained({hf_path!r})")
    if verify:
        report_logit_difference(model, hf_path)


def _export(load: str, hf_path: str, dtype: Optional[str], max_shard_bytes: int) -> TSPQwen3Model:
    model, args = load_model(load), checkpoint_args(load)
    config = model.qwen3_config
    torch_dtype, described = _chosen_dtype(dtype, lambda: checkpoint_dtype(args),
                                           "the checkpoint's dtype")
    params, total = dict(model.named_parameters()), tensor_count(config, hf=True)

    def tensors():
        for count, (name, tensor) in enumerate(
                megatron_to_hf(lambda n: params[n].detach(), config), 1):
            _log(f"  [{count}/{total}] {name}")
            yield name, tensor.to(torch_dtype)

    tokenizer = Path(load) / "tokenizer"
    if not tokenizer.is_dir():
        tokenizer = Path(args.tokenizer_model or "")
    _log(f"exporting {load} as {described}")
    write_hf_checkpoint(hf_path, hf_config_from_qwen3(config, _HF_NAMES[torch_dtype]),
                        tensors(), max_shard_bytes,
                        tokenizer if tokenizer.is_dir() else None)
    return model


@torch.no_grad()
def report_logit_difference(model: TSPQwen3Model, hf_path: str, sequences: int = 2,
                            seed: int = 0) -> float:
    """Largest |logit difference| between the TSP model and transformers on random tokens."""
    from transformers import AutoModelForCausalLM
    from megatron_tsp.layout import gather_to_full, scatter_to_local
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf = AutoModelForCausalLM.from_pretrained(hf_path, dtype=torch.float32).eval()
    config, D = model.qwen3_config, ps.get_tsp_world_size()
    length = 16 * D
    tokens = torch.randint(0, config.vocab_size, (sequences, length),
                           generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(length).expand(sequences, length)
    local = model.float()(scatter_to_local(tokens, 1), scatter_to_local(positions, 1))
    ours = gather_to_full(local, dim=1)[..., :config.vocab_size]
    difference = (ours - hf(input_ids=tokens).logits).abs().max().item()
    _log(f"verify: largest logit difference over {sequences} random sequences of {length} "
         f"tokens: {difference:.3e}")
    return difference
