"""Full (unsharded) weights in and out of a TSP model, by Megatron GPTModel parameter name.

A full state dict is what GPTModel (local spec) holds at tensor-parallel size 1. Vocabulary
tables may have any padding: rows past the real vocabulary are dropped or zero-filled.
"""

from typing import Dict, Iterable, Tuple

import torch
from torch import nn

from megatron_tsp import parallel_state as ps
from megatron_tsp.layers.linear import gather_full, shard_of

_VOCAB_TABLES = ("embedding.word_embeddings.weight", "output_layer.weight")


def _resize_vocab(table: torch.Tensor, rows: int, vocab_size: int) -> torch.Tensor:
    out = torch.zeros((rows,) + tuple(table.shape[1:]), dtype=table.dtype)
    out[:vocab_size] = table[:vocab_size]
    return out


@torch.no_grad()
def load_full_tensors(model: nn.Module, tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
    """Copy this rank's shard of each (name, full tensor) into the model, one at a time, so only
    one full tensor is held at once; every parameter must be given exactly once."""
    params = dict(model.named_parameters())
    D, p = ps.get_tsp_world_size(), ps.get_tsp_rank()
    loaded = set()
    for name, tensor in tensors:
        if name not in params or name in loaded:
            raise ValueError(f"full weights do not match the model: unexpected or repeated {name}")
        param = params[name]
        if name in _VOCAB_TABLES:
            tensor = _resize_vocab(tensor, param.tsp_full_shape[0],
                                   model.qwen3_config.vocab_size)
        expected = getattr(param, "tsp_full_shape", tuple(param.shape))
        if tuple(tensor.shape) != tuple(expected):
            raise ValueError(f"{name}: shape {tuple(tensor.shape)} does not match the model's "
                             f"{tuple(expected)}")
        param.copy_(shard_of(tensor, param, p, D))
        loaded.add(name)
    if loaded != params.keys():
        raise ValueError(f"full weights do not match the model: missing "
                         f"{sorted(params.keys() - loaded)}")


def load_full_state_dict(model: nn.Module, full: Dict[str, torch.Tensor]) -> None:
    """Copy this rank's shard of every full tensor into the model (see load_full_tensors)."""
    load_full_tensors(model, full.items())


@torch.no_grad()
def full_state_dict(model: nn.Module, padded_vocab: bool = False) -> Dict[str, torch.Tensor]:
    """Every parameter gathered to full shape (a collective: call it on every TSP rank)."""
    out = {}
    for name, param in model.named_parameters():
        tensor = gather_full(param.detach(), param)
        if name in _VOCAB_TABLES and not padded_vocab:
            tensor = tensor[:model.qwen3_config.vocab_size]
        out[name] = tensor.clone()
    return out
