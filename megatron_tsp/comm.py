"""Every transfer across the TSP axis: primitives, schedules' streams, autograd, byte counters.

Byte accounting (per rank, payload only, so formulas stay algorithm-independent):
  broadcast of N bytes        owner sent N; every other rank received N
  all-gather of n per rank    sent n; received n x (D-1)
  reduce-scatter, n per rank  sent n x (D-1); received n x (D-1)
  reduce of N bytes to owner  every other rank sent N; owner received N x (D-1)
  all-reduce of N bytes       sent and received 2N(D-1)/D each (ring)
  point-to-point of N bytes   sender sent N; receiver received N
  all-to-all of N per rank    sent and received N (D-1) / D each (its own block stays)

Waiting is timed by kind (`exposed_communication`). While a benchmark records a timeline
(`record_timeline`), every post and every wait is also kept with its time, so that waiting can be
split into waiting for a late rank and waiting for the wire (benchmarks/exposure.py).
"""

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from megatron_tsp import parallel_state as ps
from megatron_tsp.transfer_kinds import REPLICATED_GRADS, grad_kind

_counters: Dict[str, Dict[str, int]] = defaultdict(lambda: {"sent": 0, "received": 0})
_exposed_s: Dict[str, float] = defaultdict(float)


class Timeline:
    """This rank's posts and waits since `record_timeline()`. A post is keyed (kind, n): the
    n-th transfer of its kind, the same transfer on every rank since ranks post in the same
    order. posts {key: perf_counter seconds}; waits [(kind, keys waited on, start, end)]."""

    def __init__(self):
        self.posts: Dict[Tuple[str, int], float] = {}
        self.waits: List[Tuple[str, List[Tuple[str, int]], float, float]] = []
        self._next: Dict[str, int] = defaultdict(int)

    def post(self, kind: str, at: float) -> Tuple[str, int]:
        key = (kind, self._next[kind])
        self._next[kind] += 1
        self.posts[key] = at
        return key


_timeline: Optional[Timeline] = None


class Posted:
    """An asynchronous transfer in flight: its works and, while a timeline records, its key."""

    def __init__(self, works: Sequence, kind: str):
        self.works = list(works)
        self.key = _timeline.post(kind, time.perf_counter()) if _timeline else None

    def wait(self) -> None:
        for w in self.works:
            w.wait()


def record_timeline() -> None:
    """Keep every post and wait from now on (a fresh timeline; called on every rank at once)."""
    global _timeline
    _timeline = Timeline()


def take_timeline() -> Timeline:
    """Stop recording; what was recorded since `record_timeline()`."""
    global _timeline
    taken, _timeline = _timeline, None
    assert taken is not None, "no timeline is being recorded"
    return taken


def count_bytes(kind: str, sent: int = 0, received: int = 0) -> None:
    _counters[kind]["sent"] += int(sent)
    _counters[kind]["received"] += int(received)


def transfer_counters() -> Dict[str, Dict[str, int]]:
    """A copy of the bytes sent and received by this rank since the last reset, by kind."""
    return {k: dict(v) for k, v in _counters.items()}


def reset_transfer_counters() -> None:
    """Zero the byte counters and the waiting times; stop recording a timeline."""
    global _timeline
    _counters.clear()
    _exposed_s.clear()
    _timeline = None


def exposed_communication() -> Dict[str, float]:
    """Seconds this rank spent waiting on transfers since the last reset, by kind: a blocking
    collective whole, an asynchronous one from its wait to its completion (what computation did
    not hide). Host time: on CPU (gloo) waits block; on a GPU they enqueue a stream wait, so
    these measure CPU runs."""
    return dict(_exposed_s)


@contextmanager
def exposed(kind: str, posted: Optional[Sequence[Posted]] = None):
    """Time spent waiting on the `posted` transfers of `kind`, or (None) on a blocking
    collective run inside the block, which is posted as the wait starts."""
    start = time.perf_counter()
    if posted is None:
        keys = [_timeline.post(kind, start)] if _timeline else []
    else:  # a key of None: posted before recording
        keys = [p.key for p in posted if p.key is not None]
    try:
        yield
    finally:
        end = time.perf_counter()
        _exposed_s[kind] += end - start
        if _timeline:
            _timeline.waits.append((kind, keys, start, end))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def wait_all(handles: Sequence[Posted], kind: str) -> None:
    with exposed(kind, handles):
        for h in handles:
            h.wait()


# ---------------------------------------------------------------------------------------------
# Primitives on the TSP group (group ranks, not global ranks)


def broadcast_from(tensor: torch.Tensor, owner: int, kind: str):
    """Async broadcast of `tensor` (filled on `owner`, a buffer elsewhere); returns the work."""
    p = ps.get_tsp_rank()
    count_bytes(kind, sent=_nbytes(tensor) if p == owner else 0,
                received=0 if p == owner else _nbytes(tensor))
    return Posted([dist.broadcast(tensor, group_src=owner, group=ps.get_tsp_group(),
                                  async_op=True)], kind)


def reduce_to_owner(tensor: torch.Tensor, owner: int, kind: str):
    """Async sum of `tensor` over the group onto `owner` (in place there; clobbered elsewhere)."""
    D, p = ps.get_tsp_world_size(), ps.get_tsp_rank()
    count_bytes(kind, sent=0 if p == owner else _nbytes(tensor),
                received=_nbytes(tensor) * (D - 1) if p == owner else 0)
    return Posted([dist.reduce(tensor, group_dst=owner, group=ps.get_tsp_group(),
                               async_op=True)], kind)


def ring_shift(send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor],
               kind: str) -> List[Posted]:
    """Async: send `send` to the next rank of the ring and receive `recv` from the previous."""
    group = ps.get_tsp_group()
    ops = []
    for s, r in zip(send, recv):
        count_bytes(kind, sent=_nbytes(s), received=_nbytes(r))
        ops.append(dist.P2POp(dist.isend, s, group=group, group_peer=ps.get_tsp_next_rank()))
        ops.append(dist.P2POp(dist.irecv, r, group=group, group_peer=ps.get_tsp_prev_rank()))
    return [Posted(dist.batch_isend_irecv(ops), kind)] if ops else []


def all_reduce_sum(tensor: torch.Tensor, kind: str, group=None) -> torch.Tensor:
    """In-place sum over the TSP group (or `group`); counted as a ring all-reduce."""
    group = group or ps.get_tsp_group()
    D = dist.get_world_size(group)
    if D > 1:
        moved = 2 * _nbytes(tensor) * (D - 1) // D
        count_bytes(kind, sent=moved, received=moved)
        with exposed(kind):
            dist.all_reduce(tensor, group=group)
    return tensor


def all_to_all(tensor: torch.Tensor, kind: str) -> torch.Tensor:
    """Block r of dim 0 (D equal blocks) goes to rank r; the result's block r came from rank
    r. Over the TSP group."""
    D = ps.get_tsp_world_size()
    if D == 1:
        return tensor
    moved = _nbytes(tensor) * (D - 1) // D
    count_bytes(kind, sent=moved, received=moved)
    out = torch.empty_like(tensor)
    with exposed(kind):
        dist.all_to_all_single(out, tensor.contiguous(), group=ps.get_tsp_group())
    return out


def all_gather_async(local: torch.Tensor, kind: str, group=None):
    """Post an all-gather along dim 0 in rank order: x_local [n, ...] -> ([D*n, ...], work).
    The buffer holds the result once the work is waited on."""
    group = group or ps.get_tsp_group()
    D = ps.get_tsp_world_size()
    count_bytes(kind, sent=_nbytes(local), received=_nbytes(local) * (D - 1))
    full = torch.empty((D * local.shape[0],) + tuple(local.shape[1:]), dtype=local.dtype,
                       device=local.device)
    return full, Posted([dist.all_gather_single(full, local.contiguous(), group=group,
                                                async_op=True)], kind)


def reduce_scatter_async(full: torch.Tensor, kind: str, group=None):
    """Post a sum over the group of [D*n, ...] whose rank-order block r lands on rank r:
    -> ([n, ...], work)."""
    group = group or ps.get_tsp_group()
    D = ps.get_tsp_world_size()
    local = torch.empty((full.shape[0] // D,) + tuple(full.shape[1:]), dtype=full.dtype,
                        device=full.device)
    count_bytes(kind, sent=_nbytes(local) * (D - 1), received=_nbytes(local) * (D - 1))
    return local, Posted([dist.reduce_scatter_single(local, full.contiguous(), group=group,
                                                     async_op=True)], kind)


class _GatherAlongSequence(torch.autograd.Function):
    """all-gather along dim 0 in rank order; backward reduce-scatters the gradient to owners."""

    @staticmethod
    def forward(ctx, local, kind, group):
        ctx.kind, ctx.group = kind, group
        full, work = all_gather_async(local, kind, group)
        wait_all([work], kind)
        return full

    @staticmethod
    def backward(ctx, grad_full):
        kind = grad_kind(ctx.kind)
        local, work = reduce_scatter_async(grad_full, kind, ctx.group)
        wait_all([work], kind)
        return local, None, None


def gather_along_sequence(local: torch.Tensor, kind: str, group=None) -> torch.Tensor:
    """x_local [n, ...] on each rank -> [D*n, ...] in rank order, on every rank (autograd), over
    the TSP group or `group` (the same ranks)."""
    if ps.get_tsp_world_size() == 1:
        return local
    return _GatherAlongSequence.apply(local, kind, group or ps.get_tsp_group())


# ---------------------------------------------------------------------------------------------
# Weight streams used by the layer schedules


class ShardBroadcast:
    """Streams owned weight shards to every rank, one step at a time, prefetching the next.

    Step j assembles the blocks of owners [j*k, (j+1)*k) (k = blocks_per_step), concatenated
    along each tensor's partition dim. `deliver` sends a step's weight-gradient partials back to
    their owners (async reduce, fp32); `owned_grads` is this rank's summed gradient afterwards.
    """

    def __init__(self, owned: Sequence[torch.Tensor], dims: Sequence[int], blocks_per_step: int,
                 kind: str):
        self.owned, self.dims, self.k, self.kind = list(owned), list(dims), blocks_per_step, kind
        self.D, self.p = ps.get_tsp_world_size(), ps.get_tsp_rank()
        assert self.D % self.k == 0
        self.num_steps = self.D // self.k
        self._reduce_work: List = []
        self._own_grad_buffers: Optional[List[torch.Tensor]] = None

    def _fetch(self, step: int):
        bufs, work = [], []
        for owner in range(step * self.k, (step + 1) * self.k):
            if owner == self.p:
                blocks = self.owned
            else:
                blocks = [torch.empty_like(t) for t in self.owned]
            if self.D > 1:
                work += [broadcast_from(b, owner, self.kind) for b in blocks]
            bufs.append(blocks)
        return bufs, work

    def _assemble(self, bufs):
        return [torch.cat([blocks[i] for blocks in bufs], dim=d) if self.k > 1 else bufs[0][i]
                for i, d in enumerate(self.dims)]

    def __iter__(self):
        pending = self._fetch(0)
        for step in range(self.num_steps):
            bufs, work = pending
            if step + 1 < self.num_steps:
                pending = self._fetch(step + 1)
            wait_all(work, self.kind)
            yield step, self._assemble(bufs)

    def deliver(self, step: int, grads: Sequence[torch.Tensor]) -> None:
        """Reduce each block of a step's weight-gradient partials onto the block's owner."""
        for i, (g, d) in enumerate(zip(grads, self.dims)):
            for j, block in enumerate(g.float().chunk(self.k, dim=d)):
                owner = step * self.k + j
                if owner == self.p and self.k > 1:
                    # its own storage: a view would keep the step's k-block buffer alive as .grad
                    block = block.clone(memory_format=torch.contiguous_format)
                else:
                    block = block.contiguous()
                if owner == self.p:
                    self._own_grad_buffers = self._own_grad_buffers or [None] * len(self.dims)
                    self._own_grad_buffers[i] = block
                if self.D > 1:
                    self._reduce_work.append(reduce_to_owner(block, owner, grad_kind(self.kind)))

    def owned_grads(self) -> List[torch.Tensor]:
        wait_all(self._reduce_work, grad_kind(self.kind))
        assert self._own_grad_buffers is not None
        return self._own_grad_buffers


class _Visit:
    """One step of a ring: the visiting shard `index`, its tensors and, in backward, its
    travelling fp32 gradient accumulators."""

    def __init__(self, ring: "ShardRing", index: int, tensors: Optional[List[torch.Tensor]]):
        self.ring, self.index, self.tensors = ring, index, tensors

    def accumulate(self, grads: Sequence[torch.Tensor]) -> None:
        """Add this rank's contribution to the visiting shard's gradient, then pass it on."""
        ring = self.ring
        wait_all(ring._acc_work, grad_kind(ring.kind))
        for acc, g in zip(ring._acc, grads):
            acc.add_(g.float())
        if ring.D > 1:
            incoming = [torch.empty_like(a) for a in ring._acc]
            ring._acc_work = ring_shift(ring._acc, incoming, grad_kind(ring.kind))
            ring._acc = incoming


class ShardRing:
    """Circulates owned shards around the TSP ring: at step s rank p holds shard (p - s) mod D.

    The transfer of the next shard is posted before the current one is used (double buffer).
    With `accumulate`, each visit adds its gradient contribution to an fp32 accumulator that
    travels with the shard; after D steps (one extra hop) the full gradient is on the owner.
    With `travel=False` the shards stay home and only the accumulators go round: for a visit
    that needs the shard's index, not its weights (the embedding's backward); `tensors` is None.
    """

    def __init__(self, owned: Sequence[torch.Tensor], kind: str, accumulate: bool = False,
                 travel: bool = True):
        self.owned, self.kind, self.travel = list(owned), kind, travel
        self.D, self.p = ps.get_tsp_world_size(), ps.get_tsp_rank()
        self._acc = [torch.zeros_like(t, dtype=torch.float32) for t in owned] if accumulate else []
        self._acc_work: List = []

    def __iter__(self):
        if not self.travel:
            for step in range(self.D):
                yield _Visit(self, (self.p - step) % self.D, None)
            return
        current = self.owned
        for step in range(self.D):
            work, incoming = [], None
            if step + 1 < self.D:
                incoming = [torch.empty_like(t) for t in current]
                work = ring_shift(current, incoming, self.kind)
            yield _Visit(self, (self.p - step) % self.D, current)
            wait_all(work, self.kind)
            current = incoming

    def owned_grads(self) -> List[torch.Tensor]:
        """The summed gradient of this rank's own shard (after the ring has run)."""
        wait_all(self._acc_work, grad_kind(self.kind))
        return self._acc


def all_reduce_replicated_grads(module: torch.nn.Module) -> None:
    """Sum the gradients of replicated params (norms) over the TSP group: each rank only saw its
    own tokens. Megatron's finalize_model_grads does the same for `sequence_parallel` params."""
    grads = [p.grad for p in module.parameters()
             if getattr(p, "sequence_parallel", False) and p.grad is not None]
    if grads and ps.get_tsp_world_size() > 1:
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        all_reduce_sum(flat, REPLICATED_GRADS)
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))
