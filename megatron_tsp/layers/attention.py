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
recomputes the step, reduce-scatters dK/dV to the token owners (autograd of the gather) and
reduces the weight-gradient partials onto the owners.
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
from megatron_tsp.layers.rotary import apply_rotary
from megatron_tsp.layout import gather_to_full, local_chunks
from megatron_tsp.models.config import Qwen3Config


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


def attention_step(x, w_qkv, w_proj, q_norm, k_norm, cos, sin, shape: AttentionShape):
    """One head-group step on the local tokens: x [s, b, h] -> partial output [s, b, h]."""
    s, b, _ = x.shape
    gs, hpg, hd = shape.groups_per_step, shape.heads_per_group, shape.head_dim
    qkv = (x @ w_qkv.t()).view(s, b, gs, hpg + 2, hd)
    q = qkv[:, :, :, :hpg].reshape(s, b, gs * hpg, hd)
    k, v = qkv[:, :, :, hpg], qkv[:, :, :, hpg + 1]
    q = apply_rotary(rms_norm(q, q_norm, shape.eps), cos, sin)
    k = apply_rotary(rms_norm(k, k_norm, shape.eps), cos, sin)
    kv_full = gather_to_full(torch.stack([k, v], dim=1), dim=0, kind="attn_kv")
    return zigzag_causal_attention(q, kv_full[:, 0], kv_full[:, 1]) @ w_proj.t()


class _AttentionSchedule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_qkv, w_proj, q_norm, k_norm, cos, sin, shape):
        ctx.shape = shape
        ctx.save_for_backward(x, w_qkv, w_proj, q_norm, k_norm, cos, sin)
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        stream = ShardBroadcast([w_qkv, w_proj], [0, 1], shape.blocks_per_step, "attn_weights")
        for _, (wq, wp) in stream:
            y += attention_step(x, wq, wp, q_norm, k_norm, cos, sin, shape).float()
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        x, w_qkv, w_proj, q_norm, k_norm, cos, sin = ctx.saved_tensors
        shape = ctx.shape
        grad_x = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        grad_q_norm = torch.zeros(q_norm.shape, dtype=torch.float32, device=x.device)
        grad_k_norm = torch.zeros_like(grad_q_norm)
        stream = ShardBroadcast([w_qkv, w_proj], [0, 1], shape.blocks_per_step, "attn_weights")
        for step, (wq, wp) in stream:
            with torch.enable_grad():
                inputs = [t.detach().requires_grad_() for t in (x, wq, wp, q_norm, k_norm)]
                y = attention_step(*inputs, cos, sin, shape)
                dx, dwq, dwp, dqn, dkn = torch.autograd.grad(y, inputs, grad_y)
            grad_x += dx
            grad_q_norm += dqn
            grad_k_norm += dkn
            stream.deliver(step, [dwq, dwp])
        grad_w_qkv, grad_w_proj = stream.owned_grads()
        return (grad_x.to(x.dtype), grad_w_qkv.to(w_qkv.dtype), grad_w_proj.to(w_proj.dtype),
                grad_q_norm.to(q_norm.dtype), grad_k_norm.to(k_norm.dtype), None, None, None)


class TSPSelfAttention(nn.Module):
    """Megatron SelfAttention's parameters (linear_qkv, linear_proj, q/k_layernorm) under the
    broadcast schedule."""

    def __init__(self, config: Qwen3Config, dtype: torch.dtype = torch.float32):
        super().__init__()
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
                                        cos, sin, self.shape)
