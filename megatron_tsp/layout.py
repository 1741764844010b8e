"""Zigzag sequence layout: which tokens a rank holds, and the hooks that cut and rebuild sequences.

A sequence of S tokens is cut into 2D chunks of c = S / 2D; rank p holds chunks p and 2D-1-p, so
causal attention work is balanced. Local tensors keep the chunks in that order: local tokens
[0, c) are global chunk p, local tokens [c, 2c) are global chunk 2D-1-p.
"""

from typing import Tuple

import torch

from megatron_tsp import parallel_state as ps
from megatron_tsp.comm import gather_along_sequence


def local_chunks(rank: int, tsp_size: int) -> Tuple[int, int]:
    """Global chunk indices held by `rank`, in local order."""
    return rank, 2 * tsp_size - 1 - rank


def _check_length(seq_length: int, tsp_size: int) -> None:
    if seq_length % (2 * tsp_size):
        raise ValueError(
            f"--seq-length ({seq_length}) must be a multiple of 2 x --tsp-size ({2 * tsp_size})")


def local_token_index(seq_length: int, rank: int, tsp_size: int) -> torch.Tensor:
    """Global token indices [S/D] of the tokens a rank holds, in local order."""
    _check_length(seq_length, tsp_size)
    c = seq_length // (2 * tsp_size)
    return torch.cat([torch.arange(k * c, (k + 1) * c) for k in local_chunks(rank, tsp_size)])


def rank_order_to_sequence_order(seq_length: int, tsp_size: int) -> torch.Tensor:
    """Permutation that puts tokens gathered in rank order ([D x S/D]) back in sequence order."""
    gathered = torch.cat([local_token_index(seq_length, r, tsp_size) for r in range(tsp_size)])
    return torch.argsort(gathered)


def scatter_to_local(full: torch.Tensor, dim: int) -> torch.Tensor:
    """Cut a full-sequence tensor (every rank holds the same one) to this rank's zigzag shard."""
    D, p = ps.get_tsp_world_size(), ps.get_tsp_rank()
    if D == 1:
        return full
    index = local_token_index(full.shape[dim], p, D).to(full.device)
    return full.index_select(dim, index)


def gather_to_full(local: torch.Tensor, dim: int, kind: str = "layout_gather") -> torch.Tensor:
    """Rebuild the full sequence on every rank from the local shards (autograd: reduce-scatter)."""
    D = ps.get_tsp_world_size()
    if D == 1:
        return local
    moved = local.movedim(dim, 0)
    gathered = gather_along_sequence(moved, kind)
    order = rank_order_to_sequence_order(gathered.shape[0], D).to(local.device)
    return gathered.index_select(0, order).movedim(0, dim)
