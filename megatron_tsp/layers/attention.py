"""TSP self-attention: head-group weight shards are broadcast, only keys/values are gathered.

Legend: s = S/D local tokens, b batch, h hidden, hd head dim, gs/hs kv groups/query heads of one
step. All ranks work on the same head-group step at once, because the keys/values of one group
must be exchanged between all tokens:

    for step j (its weights broadcast from their owners, step j+1 prefetched):
        k, v = x_local @ W_kv_j^T         k RMSNorm, RoPE at global positions
        post all-gather(k, v)             only the gs kv heads of this step (never repeated)
        q = x_local @ W_q_j^T             q RMSNorm, RoPE (while k, v travel)
        finish step j-1: wait for its K, V;  y += attention(q, K, V) @ W_proj^T
    finish the last step              partial sums in fp32, no all-reduce

so each step's keys/values travel while the next step's projections and the previous step's
attention run. With G >= D kv groups there are D steps, one shard each; with G < D there are G
steps and a group's rows are spread over D/G owners, broadcast and concatenated (Megatron's row
split of the interleaved linear_qkv is kept either way). Backward re-broadcasts each step's
weights, recomputes what the step did not keep (layers/recompute.py; never the output
projection), runs the core's backward, posts the dK/dV reduce-scatter to the token owners and,
while it travels, runs the step's query path down to x and the next step's core backward before
it finishes the key/value path; each step's weight-gradient partials are reduced onto the owners.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from megatron_tsp import parallel_state as ps
from megatron_tsp.comm import ShardBroadcast
from megatron_tsp.config import Qwen3Config
from megatron_tsp.documents import PackedDocuments
from megatron_tsp.layers.chunk_attention import causal_chunk_attention, document_chunk_attention
from megatron_tsp.layers.linear import TSPLinear
from megatron_tsp.layers.norm import RMSNorm, rms_norm
from megatron_tsp.layers.recompute import NONE, Recompute
from megatron_tsp.layers.rotary import apply_rotary
from megatron_tsp.layout import SequenceGather, SequenceReduceScatter, local_chunks
from megatron_tsp.transfer_kinds import ATTN_KV, ATTN_WEIGHTS, grad_kind


@dataclass(frozen=True)
class AttentionShape:
    heads: int
    groups: int
    head_dim: int
    eps: float
    tsp_size: int

    @property
    def num_steps(self) -> int:
        return min(self.groups, self.tsp_size)

    @property
    def blocks_per_step(self) -> int:
        return self.tsp_size // self.num_steps

    @property
    def groups_per_step(self) -> int:
        return self.groups // self.num_steps

    @property
    def heads_per_group(self) -> int:
        return self.heads // self.groups


def zigzag_causal_attention(q: torch.Tensor, kv_full: torch.Tensor,
                            chunks: Optional[Tuple[int, int]] = None,
                            documents: Optional[PackedDocuments] = None) -> torch.Tensor:
    """q [s, b, hs, hd] of the local zigzag chunks (global indices `chunks`, by default this
    rank's); kv_full [S, 2, b, gs, hd] keys and values in sequence order.

    Each local chunk attends to keys up to its own end, or with packed `documents` (made for the
    same chunks) to the keys of each query's own document up to the query, with no mask built on
    any device (layers/chunk_attention.py). GQA is left to the kernels, so kv heads are never
    repeated; the kernels read views of kv_full, so what backward keeps of the keys/values is
    kv_full itself. Returns [s, b, hs * hd].
    """
    s, b, hs, hd = q.shape
    c = s // 2
    if documents is not None:
        return torch.cat([document_chunk_attention(q[i * c:(i + 1) * c], kv_full, segments)
                          for i, segments in enumerate(documents.chunks)]).reshape(s, b, hs * hd)
    if chunks is None:
        chunks = local_chunks(ps.get_tsp_rank(), ps.get_tsp_world_size())
    k, v = kv_full.permute(1, 2, 3, 0, 4)  # each [b, gs, S, hd]
    outputs = []
    for i, chunk in enumerate(chunks):
        kv_len = (chunk + 1) * c
        q_i = q[i * c:(i + 1) * c].permute(1, 2, 0, 3)  # [b, hs, c, hd]
        o = causal_chunk_attention(q_i, k[:, :, :kv_len], v[:, :, :kv_len])
        outputs.append(o.permute(2, 0, 1, 3))
    return torch.cat(outputs).reshape(s, b, hs * hd)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_()


def _split_qkv(w_qkv: torch.Tensor, shape: AttentionShape):
    """A step's interleaved linear_qkv rows [gs * (hpg + 2) * hd, h] -> its query rows and its
    key/value rows, each contiguous, so keys/values can be projected (and sent) first."""
    w = w_qkv.view(shape.groups_per_step, shape.heads_per_group + 2, shape.head_dim, -1)
    hpg = shape.heads_per_group
    return w[:, :hpg].reshape(-1, w.shape[-1]), w[:, hpg:].reshape(-1, w.shape[-1])


def _project(x, w, heads_per_group: int, shape: AttentionShape):
    """x [s, b, h] @ w^T -> [s, b, gs, heads_per_group, hd]."""
    s, b, _ = x.shape
    return (x @ w.t()).view(s, b, shape.groups_per_step, heads_per_group, shape.head_dim)


def _queries(q_raw, q_norm, cos, sin, shape: AttentionShape):
    """[s, b, gs, hpg, hd] -> q [s, b, hs, hd], normalised and rotated."""
    q = q_raw.flatten(2, 3)
    return apply_rotary(rms_norm(q, q_norm, shape.eps), cos, sin)


def _keys_values(kv_raw, k_norm, cos, sin, shape: AttentionShape):
    """[s, b, gs, 2, hd] -> kv [s, 2, b, gs, hd], k normalised and rotated."""
    k = apply_rotary(rms_norm(kv_raw[:, :, :, 0], k_norm, shape.eps), cos, sin)
    return torch.stack([k, kv_raw[:, :, :, 1]], dim=1)


def _gather_kv(kv_local) -> SequenceGather:
    """The step's keys/values from every rank, in the background, on a group of their own so
    they never wait behind a weight transfer: kv_local [s, 2, b, gs, hd] -> [S, 2, b, gs, hd]."""
    return SequenceGather(kv_local.detach(), ATTN_KV, ps.get_tsp_kv_group())


class _Kept:
    """What one head-group step keeps for backward (layers/recompute.py says which): `raw` the
    projections' outputs (q_raw, kv_raw) to recompute the norms and RoPE from; `norm_leaves`
    (q_raw, kv_raw, q_norm, k_norm) and `normed` (q, kv_local) the kept graph of the norms and
    RoPE; `core_leaves` (q, kv_full) and `out` the kept graph of the attention core."""

    def __init__(self):
        self.raw = self.norm_leaves = self.normed = self.core_leaves = self.out = None


def _normed(kept: _Kept, part: int, raw, norm, cos, sin, shape, keep_graph: bool):
    """The queries (part 0: q_raw [s, b, gs, hpg, hd] -> [s, b, hs, hd]) or the keys/values
    (part 1: kv_raw [s, b, gs, 2, hd] -> [s, 2, b, gs, hd]) after norm and RoPE, recorded in
    `kept`'s graph when `keep_graph`."""
    fn = (_queries, _keys_values)[part]
    if not keep_graph:
        return fn(raw, norm, cos, sin, shape)
    if kept.norm_leaves is None:
        kept.norm_leaves, kept.normed = [None] * 4, [None] * 2
    kept.norm_leaves[part], kept.norm_leaves[2 + part] = _leaf(raw), _leaf(norm)
    with torch.enable_grad():
        kept.normed[part] = fn(kept.norm_leaves[part], kept.norm_leaves[2 + part], cos, sin,
                               shape)
    return kept.normed[part]


def _project_and_gather(kept: _Kept, x, w_q, w_kv, norms, cos, sin, shape, keep_graph: bool,
                        gather: bool):
    """A step's keys/values projected and normalised first, their all-gather posted (if
    `gather`), then its queries, computed while the keys/values travel; the projections taken
    from `kept.raw` when it holds them. w_q, w_kv: the step's rows (`_split_qkv`).
    -> q [s, b, hs, hd], the gather or None, and the projections (q_raw, kv_raw)."""
    raw = kept.raw
    kv_raw = raw[1] if raw else _project(x, w_kv, 2, shape)
    kv = _normed(kept, 1, kv_raw, norms[1], cos, sin, shape, keep_graph)
    in_flight = _gather_kv(kv) if gather else None
    q_raw = raw[0] if raw else _project(x, w_q, shape.heads_per_group, shape)
    q = _normed(kept, 0, q_raw, norms[0], cos, sin, shape, keep_graph)
    return q, in_flight, (q_raw, kv_raw)


def _start_step(x, w_qkv, norms, cos, sin, shape, recompute: Recompute):
    """The first half of a step's forward, up to its K/V all-gather in flight.
    -> (kept, q [s, b, hs, hd], the gather)."""
    kept = _Kept()
    keep_norms = not (recompute.qkv or recompute.norm_rope)
    q, gather, raw = _project_and_gather(kept, x, *_split_qkv(w_qkv, shape), norms, cos, sin,
                                         shape, keep_norms, True)
    if not keep_norms and not recompute.qkv:
        kept.raw = raw
    return kept, q, gather


def _finish_step(kept: _Kept, q, gather: SequenceGather, recompute: Recompute, documents):
    """The second half: attention once the keys/values are in -> [s, b, hs * hd] (no graph)."""
    kv_full = gather.wait()
    if recompute.qkv or recompute.core_attn:
        return zigzag_causal_attention(q.detach(), kv_full, documents=documents)
    kept.core_leaves = [_leaf(q), _leaf(kv_full)]
    with torch.enable_grad():
        kept.out = zigzag_causal_attention(*kept.core_leaves, documents=documents)
    return kept.out.detach()


class _BackwardStep:
    """One step's backward in two halves, so that its dK/dV reduce-scatter travels while the
    step's query path and the next step's attention core run backward."""

    def __init__(self, kept: _Kept, x, w_qkv, w_proj, grad_y, norms, cos, sin, shape,
                 documents):
        """The first half: recompute what was not kept, the core's backward, dK/dV posted,
        then the query path down to x (which needs no dK/dV)."""
        self.x2, self.shape = x.flatten(0, 1), shape
        self.w_q, self.w_kv = _split_qkv(w_qkv, shape)
        regather = kept.out is None
        if kept.norm_leaves is None:
            _, gather, _ = _project_and_gather(kept, x, self.w_q, self.w_kv, norms, cos, sin,
                                               shape, True, regather)
        else:
            gather = _gather_kv(kept.normed[1]) if regather else None
        self.leaves, self.normed = kept.norm_leaves, kept.normed
        grad_y2 = grad_y.flatten(0, 1)
        grad_out = grad_y2 @ w_proj  # while the keys/values travel again, if they must
        core_leaves, out = kept.core_leaves, kept.out
        if out is None:
            core_leaves = [_leaf(self.normed[0]), _leaf(gather.wait())]
            with torch.enable_grad():
                out = zigzag_causal_attention(*core_leaves, documents=documents)
        self.grad_w_proj = grad_y2.t() @ out.detach().flatten(0, 1)
        grad_q, grad_kv_full = torch.autograd.grad(out, core_leaves, grad_out.view_as(out))
        self.scatter = SequenceReduceScatter(grad_kv_full, grad_kind(ATTN_KV),
                                             ps.get_tsp_kv_group())
        # a recomputed core's graph and the full dK/dV (now copied for the reduce-scatter) are
        # not needed by the query path: freed before it runs
        del grad_kv_full, out, core_leaves
        grad_q_raw, self.grad_q_norm = torch.autograd.grad(
            self.normed[0], [self.leaves[0], self.leaves[2]], grad_q)
        self.grad_q_raw2 = grad_q_raw.flatten(2).flatten(0, 1)
        self.grad_x = (self.grad_q_raw2 @ self.w_q).view_as(x)

    def finish(self):
        """The second half, once dK/dV are home: the key/value path down to x; the weight
        gradient in linear_qkv's interleaved layout. -> grad x, w_qkv, w_proj, q_norm, k_norm."""
        grad_kv_raw, grad_k_norm = torch.autograd.grad(
            self.normed[1], [self.leaves[1], self.leaves[3]], self.scatter.wait())
        grad_kv_raw2 = grad_kv_raw.flatten(2).flatten(0, 1)
        self.grad_x += (grad_kv_raw2 @ self.w_kv).view_as(self.grad_x)
        gs, hd, h = self.shape.groups_per_step, self.shape.head_dim, self.x2.shape[1]
        grad_w_qkv = torch.cat([(self.grad_q_raw2.t() @ self.x2).view(gs, -1, hd, h),
                                (grad_kv_raw2.t() @ self.x2).view(gs, 2, hd, h)], dim=1)
        return (self.grad_x, grad_w_qkv.view(-1, h), self.grad_w_proj, self.grad_q_norm,
                grad_k_norm)


class _AttentionSchedule(torch.autograd.Function):
    """Steps are software-pipelined: step j+1's keys/values are gathered while step j's
    attention runs, and in backward step j's dK/dV are reduce-scattered while step j's query
    path and step j+1's core run backward."""

    @staticmethod
    def forward(ctx, x, w_qkv, w_proj, q_norm, k_norm, cos, sin, shape, recompute, documents):
        ctx.shape, ctx.documents = shape, documents
        ctx.save_for_backward(x, w_qkv, w_proj, q_norm, k_norm, cos, sin)
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        ctx.kept, started = [], None

        def finish(kept, q, gather, wp):
            y.add_((_finish_step(kept, q, gather, recompute, documents) @ wp.t()).float())

        stream = ShardBroadcast([w_qkv, w_proj], [0, 1], shape.blocks_per_step, ATTN_WEIGHTS)
        for _, (wq, wp) in stream:
            kept, q, gather = _start_step(x, wq, (q_norm, k_norm), cos, sin, shape, recompute)
            ctx.kept.append(kept)
            if started is not None:
                finish(*started)
            started = (kept, q, gather, wp)
        finish(*started)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        x, w_qkv, w_proj, q_norm, k_norm, cos, sin = ctx.saved_tensors
        shape = ctx.shape
        grad_x = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        grad_q_norm = torch.zeros(q_norm.shape, dtype=torch.float32, device=x.device)
        grad_k_norm = torch.zeros_like(grad_q_norm)
        stream = ShardBroadcast([w_qkv, w_proj], [0, 1], shape.blocks_per_step, ATTN_WEIGHTS)
        started = None

        def finish(step, backward_step):
            dx, dwq, dwp, dqn, dkn = backward_step.finish()
            grad_x.add_(dx)
            grad_q_norm.add_(dqn)
            grad_k_norm.add_(dkn)
            stream.deliver(step, [dwq, dwp])

        for step, (wq, wp) in stream:
            kept, ctx.kept[step] = ctx.kept[step], None  # freed as backward goes
            backward_step = _BackwardStep(kept, x, wq, wp, grad_y, (q_norm, k_norm), cos, sin,
                                          shape, ctx.documents)
            if started is not None:
                finish(*started)
            started = (step, backward_step)
        finish(*started)
        grad_w_qkv, grad_w_proj = stream.owned_grads()
        return (grad_x.to(x.dtype), grad_w_qkv.to(w_qkv.dtype), grad_w_proj.to(w_proj.dtype),
                grad_q_norm.to(q_norm.dtype), grad_k_norm.to(k_norm.dtype), None, None, None,
                None, None)


class TSPSelfAttention(nn.Module):
    """Megatron SelfAttention's parameters (linear_qkv, linear_proj, q/k_layernorm) under the
    broadcast schedule."""

    def __init__(self, config: Qwen3Config, dtype: torch.dtype = torch.float32,
                 recompute: Recompute = NONE):
        super().__init__()
        self.recompute = recompute
        nh, ng, hd = config.num_attention_heads, config.num_query_groups, config.kv_channels
        self.linear_qkv = TSPLinear((nh + 2 * ng) * hd, config.hidden_size, 0, dtype=dtype)
        self.linear_proj = TSPLinear(config.hidden_size, nh * hd, 1, dtype=dtype)
        self.q_layernorm = RMSNorm(hd, config.norm_epsilon, dtype)
        self.k_layernorm = RMSNorm(hd, config.norm_epsilon, dtype)
        self.shape = AttentionShape(nh, ng, hd, config.norm_epsilon, ps.get_tsp_world_size())

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                documents: Optional[PackedDocuments] = None) -> torch.Tensor:
        """x_local [s, b, h], cos/sin [s, b, 1, hd] -> y_local [s, b, h]; `documents` packed
        in the batch (megatron_tsp.documents), or None: one causal sequence."""
        return _AttentionSchedule.apply(x, self.linear_qkv.weight, self.linear_proj.weight,
                                        self.q_layernorm.weight, self.k_layernorm.weight,
                                        cos, sin, self.shape, self.recompute, documents)
