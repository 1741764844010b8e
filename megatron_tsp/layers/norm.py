"""RMSNorm, replicated on every rank of the TSP group (gradients summed over the group).

Autograd over the composed ops would keep, per norm, an fp32 copy of the input and the
normalised input besides the output the next layer keeps: in bf16 twice the memory of the input
and output alone, and most of TSP's activation memory (each layer's attention and MLP keep only
their input). The norm here keeps its input and 1/rms per token and recomputes the normalised
input in backward.
"""

import torch
from torch import nn

from megatron_tsp.layers.linear import mark_replicated


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        x32 = x.float()
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # [..., 1] fp32
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, rstd = ctx.saved_tensors
        x32 = x.float()
        normed = (x32 * rstd).to(x.dtype)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_out * normed).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            grad_normed = (grad_out * weight).float()
            # d(x rstd)/dx with rstd = (mean(x^2) + eps)^-1/2
            grad_x = grad_normed * rstd - x32 * rstd.pow(3) * (grad_normed * x32).mean(
                -1, keepdim=True)
            grad_x = grad_x.to(x.dtype)
        return grad_x, grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3/Megatron RMSNorm: the variance in fp32 whatever the input dtype."""
    return _RMSNorm.apply(x, weight, eps)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.eps = eps
        self.weight = mark_replicated(nn.Parameter(torch.ones(size, dtype=dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)
