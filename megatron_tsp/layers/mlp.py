"""TSP SwiGLU MLP: weight shards circulate in a ring; no token mixes with another, no all-reduce.

Legend: x_local [s, b, h]; shard r = (fc1_r [2F/D, h] = [gate_r; up_r], fc2_r [h, F/D]).

    for step t in 0..D-1:   rank p holds shard (p - t) mod D, the next one already in flight
        y += (silu(x @ gate_r^T) * (x @ up_r^T)) @ fc2_r^T        (fp32 partial sums)

Backward runs the ring again; an fp32 gradient accumulator travels with each shard and every
rank adds its own tokens' contribution, so after D steps shard r's full gradient sits on rank r.
"""

import torch
import torch.nn.functional as F
from torch import nn

from megatron_tsp.comm import ShardRing
from megatron_tsp.layers.linear import TSPLinear
from megatron_tsp.models.config import Qwen3Config


def swiglu_mlp(x: torch.Tensor, w_fc1: torch.Tensor, w_fc2: torch.Tensor) -> torch.Tensor:
    """Megatron's gated linear unit: the first half of fc1's output goes through silu."""
    gate, up = (x @ w_fc1.t()).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w_fc2.t()


class _MLPRing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_fc1, w_fc2):
        ctx.save_for_backward(x, w_fc1, w_fc2)
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for visit in ShardRing([w_fc1, w_fc2], "mlp_weights"):
            y += swiglu_mlp(x, *visit.tensors).float()
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        x, w_fc1, w_fc2 = ctx.saved_tensors
        grad_x = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        ring = ShardRing([w_fc1, w_fc2], "mlp_weights", accumulate=True)
        for visit in ring:
            with torch.enable_grad():
                inputs = [t.detach().requires_grad_() for t in (x, *visit.tensors)]
                dx, d_fc1, d_fc2 = torch.autograd.grad(swiglu_mlp(*inputs), inputs, grad_y)
            grad_x += dx
            visit.accumulate([d_fc1, d_fc2])
        grad_fc1, grad_fc2 = ring.owned_grads()
        return grad_x.to(x.dtype), grad_fc1.to(w_fc1.dtype), grad_fc2.to(w_fc2.dtype)


class TSPMLP(nn.Module):
    """Megatron MLP's parameters (linear_fc1 = [gate; up], linear_fc2), ring schedule."""

    def __init__(self, config: Qwen3Config, dtype: torch.dtype = torch.float32):
        super().__init__()
        F_, h = config.ffn_hidden_size, config.hidden_size
        self.linear_fc1 = TSPLinear(2 * F_, h, 0, swiglu=True, dtype=dtype)
        self.linear_fc2 = TSPLinear(h, F_, 1, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MLPRing.apply(x, self.linear_fc1.weight, self.linear_fc2.weight)
