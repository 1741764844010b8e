"""Zigzag sequence layout: which tokens a rank holds, and the hooks that cut and rebuild sequences.

A sequence of S tokens is cut into 2D chunks of c = S / 2D; rank p holds chunks p and 2D-1-p, so
causal attention work is balanced. Local tensors keep the chunks in that order: local tokens
[0, c) are global chunk p, local tokens [c, 2c) are global chunk 2D-1-p.
"""

from typing import Optional, Tuple

import torch

from megatron_tsp import parallel_state as ps
from megatron_tsp.comm import gather_along_sequence
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


def gather_to_full(local: torch.Tensor, dim: int, kind: str = LAYOUT_GATHER,
                   group=None) -> torch.Tensor:
    """Rebuild the full sequence on every rank from the local shards (autograd: reduce-scatter).

    Gathered in rank order, rank r's first chunk is global chunk r and its second chunk global
    chunk 2D-1-r: the first halves in rank order, then the second halves in reverse rank order,
    are the sequence (views and one concatenation: no permutation index). Over the TSP group,
    or `group` (the same ranks).
    """
    D = ps.get_tsp_world_size()
    if D == 1:
        return local
    moved = local.movedim(dim, 0)
    gathered = gather_along_sequence(moved, kind, group)  # [D * 2c, ...] in rank order
    by_rank = gathered.view((D, 2, moved.shape[0] // 2) + tuple(moved.shape[1:]))
    in_order = [by_rank[r, 0] for r in range(D)] + [by_rank[r, 1] for r in reversed(range(D))]
    return torch.cat(in_order).movedim(0, dim)
