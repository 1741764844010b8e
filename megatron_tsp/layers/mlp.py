"""TSP SwiGLU MLP: weight shards circulate in a ring; no token mixes with another, no all-reduce.

Legend: x_local [s, b, h]; shard r = (fc1_r [2F/D, h] = [gate_r; up_r], fc2_r [h, F/D]).

    for step t in 0..D-1:   rank p holds shard (p - t) mod D, the next one already in flight
        y += (silu(x @ gate_r^T) * (x @ up_r^T)) @ fc2_r^T        (fp32 partial sums)

Backward runs the ring again, recomputing what a visit did not keep (layers/recompute.py; never
the fc2 GEMM); an fp32 gradient accumulator travels with each shard and every rank adds its own
tokens' contribution, so after D steps shard r's full gradient sits on rank r.
"""

import torch
import torch.nn.functional as F
from torch import nn

from megatron_tsp.comm import ShardRing
from megatron_tsp.layers.linear import TSPLinear
from megatron_tsp.layers.recompute import NONE, Recompute
from megatron_tsp.config import Qwen3Config
from megatron_tsp.transfer_kinds import MLP_WEIGHTS


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """Megatron's gated linear unit: the first half of fc1's output goes through silu."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def swiglu_mlp(x: torch.Tensor, w_fc1: torch.Tensor, w_fc2: torch.Tensor) -> torch.Tensor:
    return swiglu(x @ w_fc1.t()) @ w_fc2.t()


def _forward_visit(x, w_fc1, recompute: Recompute):
    """The activation [s, b, F/D] of one visiting shard (no graph), and what backward needs:
    the activation's graph from fc1's output, fc1's output alone, or nothing."""
    gate_up = x @ w_fc1.t()
    if recompute.fc1:
        return swiglu(gate_up), None
    if recompute.swiglu:
        return swiglu(gate_up), gate_up
    gate_up.requires_grad_()
    with torch.enable_grad():
        act = swiglu(gate_up)
    return act.detach(), (gate_up, act)


def _backward_visit(kept, x, w_fc1, w_fc2, grad_y):
    """-> grad w_fc1, w_fc2 of one visit, recomputing what it did not keep (never fc2), and the
    gradient of fc1's output [s*b, 2F/D], from which the caller takes grad x."""
    if not isinstance(kept, tuple):
        gate_up = (kept if kept is not None else x @ w_fc1.t()).requires_grad_()
        with torch.enable_grad():
            kept = gate_up, swiglu(gate_up)
    gate_up, act = kept
    grad_y2 = grad_y.flatten(0, 1)
    grad_w_fc2 = grad_y2.t() @ act.detach().flatten(0, 1)
    grad_gate_up, = torch.autograd.grad(act, gate_up, (grad_y2 @ w_fc2).view_as(act))
    grad_gate_up2 = grad_gate_up.flatten(0, 1)
    return grad_gate_up2.t() @ x.flatten(0, 1), grad_w_fc2, grad_gate_up2


class _MLPRing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_fc1, w_fc2, recompute):
        ctx.save_for_backward(x, w_fc1, w_fc2)
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        ctx.kept = []
        for visit in ShardRing([w_fc1, w_fc2], MLP_WEIGHTS):
            act, kept = _forward_visit(x, visit.tensors[0], recompute)
            ctx.kept.append(kept)
            y += (act @ visit.tensors[1].t()).float()
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        x, w_fc1, w_fc2 = ctx.saved_tensors
        grad_x = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        ring = ShardRing([w_fc1, w_fc2], MLP_WEIGHTS, accumulate=True)
        for step, visit in enumerate(ring):
            kept, ctx.kept[step] = ctx.kept[step], None  # freed as backward goes
            d_fc1, d_fc2, grad_gate_up2 = _backward_visit(kept, x, *visit.tensors, grad_y)
            visit.accumulate([d_fc1, d_fc2])
            # after the weight gradients are sent on: this GEMM runs while they travel
            grad_x += (grad_gate_up2 @ visit.tensors[0]).view_as(x)
        grad_fc1, grad_fc2 = ring.owned_grads()
        return grad_x.to(x.dtype), grad_fc1.to(w_fc1.dtype), grad_fc2.to(w_fc2.dtype), None


class TSPMLP(nn.Module):
    """Megatron MLP's parameters (linear_fc1 = [gate; up], linear_fc2), ring schedule."""

    def __init__(self, config: Qwen3Config, dtype: torch.dtype = torch.float32,
                 recompute: Recompute = NONE):
        super().__init__()
        self.recompute = recompute
        F_, h = config.ffn_hidden_size, config.hidden_size
        self.linear_fc1 = TSPLinear(2 * F_, h, 0, swiglu=True, dtype=dtype)
        self.linear_fc2 = TSPLinear(h, F_, 1, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MLPRing.apply(x, self.linear_fc1.weight, self.linear_fc2.weight,
                             self.recompute)
