"""Count the bytes of megatron-core's tensor-parallel collectives with megatron_tsp.comm's counters.

Megatron TP/TP+SP calls torch.distributed directly: all_reduce (row-parallel outputs, column-
parallel input gradients, the vocab-parallel cross entropy, the replicated-gradient sum), and the
all-gather / reduce-scatter functions that tensor_parallel.mappings and tensor_parallel.layers bound
at import time (`dist_all_gather_func`, `dist_reduce_scatter_func`). `install()` wraps each of them
in this process (the benchmark's tp and tp-sp ranks only) so that every call adds its payload to
megatron_tsp.comm's counters with the same convention as the TSP transfers:

    all-gather, n bytes per rank     sent n; received n x (D-1)
    reduce-scatter, n bytes out      sent n x (D-1); received n x (D-1)
    all-reduce of N bytes            sent and received 2N(D-1)/D each (ring)

Kinds: `tp_all_reduce`, `sp_all_gather`, `sp_reduce_scatter` (activations and their gradients),
`vocab_loss` (all-reduces issued by the vocab-parallel cross entropy), `replicated_grads` (the
norms' gradient sum in finalize_model_grads). A blocking call's duration is its exposed
communication (megatron_tsp.comm.exposed); Megatron's few asynchronous calls count only their
issue.
"""

import sys

import torch.distributed as dist

from megatron_tsp.comm import count_bytes, exposed
from megatron_tsp.transfer_kinds import (
    REPLICATED_GRADS, SP_ALL_GATHER, SP_REDUCE_SCATTER, TP_ALL_REDUCE, VOCAB_LOSS)

_CALLER_KINDS = {
    "megatron.core.tensor_parallel.cross_entropy": VOCAB_LOSS,
    "megatron.core.distributed.finalize_model_grads": REPLICATED_GRADS,
}
_installed = False


def _kind(default: str) -> str:
    # two frames up: the wrapper's caller, i.e. the megatron module issuing the collective
    return _CALLER_KINDS.get(sys._getframe(2).f_globals.get("__name__"), default)


def _group_size(group) -> int:
    return dist.get_world_size(group)


def _count_all_reduce(real):
    def all_reduce(tensor, *args, group=None, **kwargs):
        size, kind = _group_size(group), _kind(TP_ALL_REDUCE)
        if size > 1:  # megatron's cross entropy all-reduces even over a group of one
            moved = 2 * tensor.numel() * tensor.element_size() * (size - 1) // size
            count_bytes(kind, sent=moved, received=moved)
        with exposed(kind):
            return real(tensor, *args, group=group, **kwargs)
    return all_reduce


def _count_all_gather_into_tensor(real):
    def all_gather_into_tensor(output, input_, group=None, **kwargs):
        n, kind = input_.numel() * input_.element_size(), _kind(SP_ALL_GATHER)
        count_bytes(kind, sent=n, received=n * (_group_size(group) - 1))
        with exposed(kind):
            return real(output, input_, group=group, **kwargs)
    return all_gather_into_tensor


def _count_reduce_scatter_tensor(real):
    def reduce_scatter_tensor(output, input_, group=None, **kwargs):
        moved = output.numel() * output.element_size() * (_group_size(group) - 1)
        kind = _kind(SP_REDUCE_SCATTER)
        count_bytes(kind, sent=moved, received=moved)
        with exposed(kind):
            return real(output, input_, group=group, **kwargs)
    return reduce_scatter_tensor


def install() -> None:
    """Wrap megatron's collective entry points in this process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    from megatron.core.tensor_parallel import layers, mappings

    dist.all_reduce = _count_all_reduce(dist.all_reduce)
    for module in (mappings, layers):
        module.dist_all_gather_func = _count_all_gather_into_tensor(module.dist_all_gather_func)
        module.dist_reduce_scatter_func = _count_reduce_scatter_tensor(
            module.dist_reduce_scatter_func)
