"""Weight ownership: shard r of every linear weight lives on rank r, cut as Megatron TP cuts it.

A `ShardedWeight` only owns its shard; the layer schedules (attention broadcast, MLP ring, vocab
ring) move it. Shards carry Megatron's TP attributes so Megatron's DDP, optimizer, grad clipping
and checkpointing treat them as tensor-parallel. Replicated per-token params (norms) carry
`sequence_parallel=True` so their gradients are summed over the TSP group.

Initialisation never depends on D: each full weight is drawn from a generator seeded by the model
seed and the parameter name, then sliced.
"""

import zlib
from typing import List, Sequence

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from torch import nn

from megatron_tsp import parallel_state as ps


class ShardedWeight(nn.Module):
    """Owner of shard r of a [out, in] weight (no bias: Qwen3 has none).

    partition_dim 0 cuts output rows (column-parallel), 1 cuts input columns (row-parallel).
    `swiglu` marks a [gate; up] weight whose shard r is [gate_r; up_r], as in Megatron TP.
    """

    def __init__(self, out_features: int, in_features: int, partition_dim: int,
                 swiglu: bool = False, dtype: torch.dtype = torch.float32):
        super().__init__()
        D = ps.get_tsp_world_size()
        full = [out_features, in_features]
        assert full[partition_dim] % (2 * D if swiglu else D) == 0
        local = list(full)
        local[partition_dim] //= D
        self.weight = nn.Parameter(torch.empty(local, dtype=dtype))
        set_tensor_model_parallel_attributes(self.weight, True, partition_dim, 1)
        self.weight.tsp_full_shape = tuple(full)
        self.weight.tsp_swiglu = swiglu


class TSPLinear(ShardedWeight):
    """A sharded linear weight; like Megatron's parallel linears it has an (empty) extra state,
    so state_dict keys are GPTModel's."""

    def get_extra_state(self):
        return None

    def set_extra_state(self, state) -> None:
        """Nothing to restore."""


def mark_replicated(param: nn.Parameter) -> nn.Parameter:
    """A param every rank holds whole; its gradient is a sum of per-rank partials."""
    param.sequence_parallel = True
    return param


def is_sharded(param: torch.Tensor) -> bool:
    return getattr(param, "tensor_model_parallel", False)


def shard_of(full: torch.Tensor, param: torch.Tensor, rank: int, tsp_size: int) -> torch.Tensor:
    """The slice of a full tensor that `param` holds on `rank`."""
    if not is_sharded(param):
        return full
    dim = param.partition_dim
    if getattr(param, "tsp_swiglu", False):
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(tsp_size, dim=dim)[rank], up.chunk(tsp_size, dim=dim)[rank]],
                         dim=dim)
    return full.chunk(tsp_size, dim=dim)[rank]


def unshard(shards: Sequence[torch.Tensor], param: torch.Tensor) -> torch.Tensor:
    """Inverse of `shard_of`: the full tensor from every rank's shard, in rank order."""
    if not is_sharded(param):
        return shards[0]
    dim = param.partition_dim
    if getattr(param, "tsp_swiglu", False):
        halves: List[torch.Tensor] = [s.chunk(2, dim=dim) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=dim)
    return torch.cat(list(shards), dim=dim)


def draw_full_normal(seed: int, name: str, shape: Sequence[int], std: float) -> torch.Tensor:
    """A full weight drawn from (seed, name) alone, so every D starts from the same model."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode()))
                                              % (2 ** 63))
    return torch.randn(tuple(shape), generator=generator) * std


def gather_full(tensor: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The full tensor from every rank's shard of `param` (or of its gradient), on every rank."""
    if not is_sharded(param) or ps.get_tsp_world_size() == 1:
        return tensor
    shards = [torch.empty_like(tensor) for _ in range(ps.get_tsp_world_size())]
    dist.all_gather(shards, tensor.contiguous(), group=ps.get_tsp_group())
    return unshard(shards, param)
