"""Zigzag sequence layout: which tokens a rank holds, and the hooks that cut and rebuild sequences.

A sequence of S tokens is cut into 2D chunks of c = S / 2D; rank p holds chunks p and 2D-1-p, so
causal attention work is balanced. Local tensors keep the chunks in that order: local tokens
[0, c) are global chunk p, local tokens [c, 2c) are global chunk 2D-1-p.
"""

from typing import List, Optional, Tuple

import torch

from megatron_tsp import parallel_state as ps
from megatron_tsp.comm import (all_gather_async, gather_along_sequence, reduce_scatter_async,
                               wait_all)
from megatron_tsp.size_rules import refuse, sequence_problem
from megatron_tsp.transfer_kinds import LAYOUT_GATHER


def local_chunks(rank: int, tsp_size: int) -> Tuple[int, int]:
    """Global chunk indices held by `rank`, in local order."""
    return rank, 2 * tsp_size - 1 - rank


def local_token_index(seq_length: int, rank: int, tsp_size: int,
                      device: Optional[torch.device] = None) -> torch.Tensor:
    """Global token indices [S/D] of the tokens a rank holds, in local order (the RoPE positions
    of its tokens), made on `device`."""
    refuse(sequence_problem(seq_length, tsp_size))
    c = seq_length // (2 * tsp_size)
    return torch.cat([torch.arange(k * c, (k + 1) * c, device=device)
                      for k in local_chunks(rank, tsp_size)])


def scatter_to_local(full: torch.Tensor, dim: int) -> torch.Tensor:
    """Cut a full-sequence tensor (every rank holds the same one) to this rank's zigzag shard.
    Slices only: no index tensor, so nothing is built on the host."""
    D, p = ps.get_tsp_world_size(), ps.get_tsp_rank()
    if D == 1:
        return full
    refuse(sequence_problem(full.shape[dim], D))
    chunks = full.chunk(2 * D, dim=dim)
    return torch.cat([chunks[k] for k in local_chunks(p, D)], dim=dim)


def rank_order_to_sequence(gathered: torch.Tensor, tsp_size: int) -> torch.Tensor:
    """[D * 2c, ...] gathered in rank order -> [S, ...] in sequence order.

    Rank r's first chunk is global chunk r and its second chunk global chunk 2D-1-r: the first
    halves in rank order, then the second halves in reverse rank order, are the sequence (views
    and one concatenation: no permutation index)."""
    by_rank = gathered.view((tsp_size, 2, gathered.shape[0] // (2 * tsp_size))
                            + tuple(gathered.shape[1:]))
    return torch.cat([by_rank[r, 0] for r in range(tsp_size)]
                     + [by_rank[r, 1] for r in reversed(range(tsp_size))])


def sequence_to_rank_order(full: torch.Tensor, tsp_size: int) -> torch.Tensor:
    """The inverse of `rank_order_to_sequence`: [S, ...] -> [D * 2c, ...] in rank order."""
    chunks = full.chunk(2 * tsp_size)
    return torch.cat([chunks[k] for r in range(tsp_size) for k in local_chunks(r, tsp_size)])


class SequenceGather:
    """The full sequence from every rank's local zigzag shard along dim 0, gathered in the
    background: x_local [s, ...] now, [S, ...] in sequence order from `wait()`. No autograd: the
    attention schedule returns the gradient itself with `SequenceReduceScatter`."""

    def __init__(self, local: torch.Tensor, kind: str, group=None):
        self.D, self.kind = ps.get_tsp_world_size(), kind
        self._local, self._full, self._work = local, None, None
        if self.D > 1:
            self._full, self._work = all_gather_async(local, kind, group)

    def wait(self) -> torch.Tensor:
        if self.D == 1:
            return self._local
        wait_all([self._work], self.kind)
        full, self._full = self._full, None  # the rank-order buffer dies with the reorder
        assert full is not None, "waited on twice"
        return rank_order_to_sequence(full, self.D)


class SequenceReduceScatter:
    """The gradient of `SequenceGather`: [S, ...] in sequence order summed over the group, each
    rank's zigzag shard [s, ...] delivered in the background, from `wait()`."""

    def __init__(self, full: torch.Tensor, kind: str, group=None):
        self.D, self.kind = ps.get_tsp_world_size(), kind
        self._local, self._work = full, None
        if self.D > 1:
            self._local, self._work = reduce_scatter_async(
                sequence_to_rank_order(full, self.D), kind, group)

    def wait(self) -> torch.Tensor:
        if self._work is not None:
            wait_all([self._work], self.kind)
        return self._local


def gather_to_full(local: torch.Tensor, dim: int, kind: str = LAYOUT_GATHER,
                   group=None) -> torch.Tensor:
    """Rebuild the full sequence on every rank from the local shards (autograd: reduce-scatter),
    over the TSP group, or `group` (the same ranks)."""
    D = ps.get_tsp_world_size()
    if D == 1:
        return local
    gathered = gather_along_sequence(local.movedim(dim, 0), kind, group)
    return rank_order_to_sequence(gathered, D).movedim(0, dim)


# Generation's KV cache (inference/kv_cache.py): the prompt's tokens stay where the zigzag cut put
# them, generated tokens go in blocks to the rank holding the fewest

BLOCK = 4
"""Generated tokens cached together on one rank, by default."""


def padded_length(tokens: int, tsp_size: int) -> int:
    """The prompt length prefill runs at: the next multiple of 2D (the zigzag's chunks)."""
    unit = 2 * tsp_size
    return -(-tokens // unit) * unit


def prompt_counts(tokens: int, tsp_size: int) -> List[int]:
    """Real (not padding) prompt tokens each rank holds after the zigzag cut."""
    c = padded_length(tokens, tsp_size) // (2 * tsp_size)
    return [sum(min(max(tokens - k * c, 0), c) for k in local_chunks(r, tsp_size))
            for r in range(tsp_size)]


def decode_placement(counts: List[int], new_tokens: int, block: int) -> List[int]:
    """The rank that caches each of `new_tokens` generated tokens, from the ranks' prompt
    token counts."""
    assert block >= 1
    counts, owners = list(counts), []
    while len(owners) < new_tokens:
        rank = min(range(len(counts)), key=lambda r: (counts[r], r))
        size = min(block, new_tokens - len(owners))
        owners += [rank] * size
        counts[rank] += size
    return owners


def cached_tokens(prompt_tokens: int, new_tokens: int, tsp_size: int,
                  block: int = BLOCK) -> List[int]:
    """Tokens each rank's cache holds once `new_tokens` generated tokens are cached."""
    counts = prompt_counts(prompt_tokens, tsp_size)
    owners = decode_placement(counts, new_tokens, block)
    return [n + owners.count(r) for r, n in enumerate(counts)]
