"""RMSNorm, replicated on every rank of the TSP group (gradients summed over the group)."""

import torch
from torch import nn

from megatron_tsp.layers.linear import mark_replicated


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3/Megatron RMSNorm: the variance in fp32 whatever the input dtype."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.eps = eps
        self.weight = mark_replicated(nn.Parameter(torch.ones(size, dtype=dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)
