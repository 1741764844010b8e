"""TSP self-attention: head-group weight shards are broadcast, only keys/values are gathered.

Legend: s = S/D local tokens, b batch, h hidden, hd head dim, gs/hs kv groups/query heads of one
step. All ranks work on the same head-group step at once, because the keys/values of one group
must be exchanged between all tokens:

    for step j (its weights broadcast from their owners, step j+1 prefetched):
        q, k, v = x_local @ W_qkv_j^T      q/k RMSNorm, RoPE at global positions
        K, V    = all-gather(k, v)         only the gs kv heads of this step (never repeated)
        y      += attention(q, K, V) @ W_proj_j^T      partial sums in fp32, no all-reduce

With G >= D kv groups there are D steps, one shard each; with G < D there are G steps and a
group's rows are spread over D/G owners, broadcast and concatenated (Megatron's row split of the
interleaved linear_qkv is kept either way). Backward re-broadcasts each step's weights,
recomputes what the step did not keep (layers/recompute.py; never the output projection),
reduce-scatters dK/dV to the token owners (autograd of the gather) and reduces the
weight-gradient partials onto the owners.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from megatron_tsp import parallel_state as ps
from megatron_tsp.comm import ShardBroadcast
from megatron_tsp.layers.chunk_attention import causal_chunk_attention
from megatron_tsp.layers.linear import TSPLinear
from megatron_tsp.layers.norm import RMSNorm, rms_norm
from megatron_tsp.layers.recompute import NONE, Recompute
from megatron_tsp.layers.rotary import apply_rotary
from megatron_tsp.layout import gather_to_full, local_chunks
from megatron_tsp.config import Qwen3Config
from megatron_tsp.transfer_kinds import ATTN_KV, ATTN_WEIGHTS


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


def zigzag_causal_attention(q: torch.Tensor, k_full: torch.Tensor, v_full: torch.Tensor,
                            chunks: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """q [s, b, hs, hd] of the local zigzag chunks (global indices `chunks`, by default this
    rank's); k/v_full [S, b, gs, hd] in sequence order.

    Each local chunk attends to keys up to its own end, with no mask built on any device
    (layers/chunk_attention.py). GQA is left to the kernels, so kv heads are never repeated.
    Returns [s, b, hs * hd].
    """
    s, b, hs, hd = q.shape
    c = s // 2
    if chunks is None:
        chunks = local_chunks(ps.get_tsp_rank(), ps.get_tsp_world_size())
    kv = torch.stack([k_full, v_full]).permute(0, 2, 3, 1, 4)  # [2, b, gs, S, hd]
    outputs = []
    for i, chunk in enumerate(chunks):
        kv_len = (chunk + 1) * c
        q_i = q[i * c:(i + 1) * c].permute(1, 2, 0, 3)  # [b, hs, c, hd]
        o = causal_chunk_attention(q_i, kv[0, :, :, :kv_len], kv[1, :, :, :kv_len])
        outputs.append(o.permute(2, 0, 1, 3))
    return torch.cat(outputs).reshape(s, b, hs * hd)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_()


def _qk_norm_rope(qkv, q_norm, k_norm, cos, sin, shape: AttentionShape):
    """qkv [s, b, gs, hpg + 2, hd] -> q [s, b, hs, hd] and kv [s, 2, b, gs, hd], normalised
    and rotated."""
    s, b, gs, hpg = *qkv.shape[:3], shape.heads_per_group
    q = qkv[:, :, :, :hpg].reshape(s, b, gs * hpg, shape.head_dim)
    q = apply_rotary(rms_norm(q, q_norm, shape.eps), cos, sin)
    k = apply_rotary(rms_norm(qkv[:, :, :, hpg], k_norm, shape.eps), cos, sin)
    return q, torch.stack([k, qkv[:, :, :, hpg + 1]], dim=1)


def _core_attention(q, kv_local):
    """The step's keys/values gathered over the group (autograd: reduce-scattered back), on a
    group of their own so they never wait behind a weight transfer, then attention of the local
    queries: -> [s, b, hs * hd]."""
    kv_full = gather_to_full(kv_local, dim=0, kind=ATTN_KV, group=ps.get_tsp_kv_group())
    return zigzag_causal_attention(q, kv_full[:, 0], kv_full[:, 1])


class _Kept:
    """What one head-group step keeps for backward (layers/recompute.py says which):
    `qkv` the qkv GEMM's output, to recompute the norms and RoPE from; `leaves` the roots
    (qkv, q_norm, k_norm) of a kept graph; `q`, `kv` the norms' and RoPE's outputs in that graph
    when the core is recomputed; `core_inputs` the roots of the core's kept graph when the norms
    are recomputed; `out` the core's output in its kept graph."""

    def __init__(self):
        self.qkv = self.leaves = self.q = self.kv = self.core_inputs = self.out = None


def _project(x, w_qkv, shape: AttentionShape):
    s, b, _ = x.shape
    return (x @ w_qkv.t()).view(s, b, shape.groups_per_step, shape.heads_per_group + 2,
                                shape.head_dim)


def _forward_step(x, w_qkv, norms, cos, sin, shape, recompute: Recompute):
    """One head-group step: x [s, b, h] -> the core's output [s, b, hs * hd] (no graph), and
    what backward needs of it."""
    kept = _Kept()
    qkv = _project(x, w_qkv, shape)
    keep_norms = not (recompute.qkv or recompute.norm_rope)
    keep_core = not (recompute.qkv or recompute.core_attn)
    if keep_norms:
        kept.leaves = [qkv.requires_grad_(), *map(_leaf, norms)]
        with torch.enable_grad():
            q, kv = _qk_norm_rope(*kept.leaves, cos, sin, shape)
        if not keep_core:
            kept.q, kept.kv = q, kv
    else:
        if not recompute.qkv:
            kept.qkv = qkv
        q, kv = _qk_norm_rope(qkv, *norms, cos, sin, shape)
    if not keep_core:
        return _core_attention(q, kv), kept
    if not keep_norms:
        q, kv = kept.core_inputs = [_leaf(q), _leaf(kv)]
    with torch.enable_grad():
        kept.out = _core_attention(q, kv)
    return kept.out.detach(), kept


def _backward_step(kept: _Kept, x, w_qkv, w_proj, grad_y, norms, cos, sin, shape):
    """Gradients of one step from what it kept, recomputing the rest; never the output
    projection. -> grad x, w_qkv, w_proj, q_norm, k_norm."""
    leaves, q, kv = kept.leaves, kept.q, kept.kv
    with torch.enable_grad():
        if leaves is None:  # the norms and RoPE were not kept
            qkv = kept.qkv if kept.qkv is not None else _project(x, w_qkv, shape)
            leaves = [_leaf(qkv), *map(_leaf, norms)]
            q, kv = _qk_norm_rope(*leaves, cos, sin, shape)
        out = kept.out if kept.out is not None else _core_attention(q, kv)
    grad_y2, out2 = grad_y.flatten(0, 1), out.detach().flatten(0, 1)
    grad_w_proj = grad_y2.t() @ out2
    grad_out = (grad_y2 @ w_proj).view_as(out)
    if kept.core_inputs is not None:
        grad_out = torch.autograd.grad(out, kept.core_inputs, grad_out)
        out = [q, kv]
    grad_qkv, grad_q_norm, grad_k_norm = torch.autograd.grad(out, leaves, grad_out)
    grad_qkv2 = grad_qkv.flatten(2).flatten(0, 1)
    grad_x = (grad_qkv2 @ w_qkv).view_as(x)
    return grad_x, grad_qkv2.t() @ x.flatten(0, 1), grad_w_proj, grad_q_norm, grad_k_norm


class _AttentionSchedule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_qkv, w_proj, q_norm, k_norm, cos, sin, shape, recompute):
        ctx.shape = shape
        ctx.save_for_backward(x, w_qkv, w_proj, q_norm, k_norm, cos, sin)
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        ctx.kept = []
        stream = ShardBroadcast([w_qkv, w_proj], [0, 1], shape.blocks_per_step, ATTN_WEIGHTS)
        for _, (wq, wp) in stream:
            out, kept = _forward_step(x, wq, (q_norm, k_norm), cos, sin, shape, recompute)
            ctx.kept.append(kept)
            y += (out @ wp.t()).float()
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        x, w_qkv, w_proj, q_norm, k_norm, cos, sin = ctx.saved_tensors
        shape = ctx.shape
        grad_x = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        grad_q_norm = torch.zeros(q_norm.shape, dtype=torch.float32, device=x.device)
        grad_k_norm = torch.zeros_like(grad_q_norm)
        stream = ShardBroadcast([w_qkv, w_proj], [0, 1], shape.blocks_per_step, ATTN_WEIGHTS)
        for step, (wq, wp) in stream:
            kept, ctx.kept[step] = ctx.kept[step], None  # freed as backward goes
            dx, dwq, dwp, dqn, dkn = _backward_step(kept, x, wq, wp, grad_y, (q_norm, k_norm),
                                                    cos, sin, shape)
            grad_x += dx
            grad_q_norm += dqn
            grad_k_norm += dkn
            stream.deliver(step, [dwq, dwp])
        grad_w_qkv, grad_w_proj = stream.owned_grads()
        return (grad_x.to(x.dtype), grad_w_qkv.to(w_qkv.dtype), grad_w_proj.to(w_proj.dtype),
                grad_q_norm.to(q_norm.dtype), grad_k_norm.to(k_norm.dtype), None, None, None,
                None)


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

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x_local [s, b, h], cos/sin [s, b, 1, hd] -> y_local [s, b, h]."""
        return _AttentionSchedule.apply(x, self.linear_qkv.weight, self.linear_proj.weight,
                                        self.q_layernorm.weight, self.k_layernorm.weight,
                                        cos, sin, self.shape, self.recompute)
