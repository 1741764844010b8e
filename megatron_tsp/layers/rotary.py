"""Rotary position embedding (rotate-half, full head dim) at the GLOBAL positions of tokens."""

from typing import Tuple

import torch


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, base: float
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """position_ids [b, s] -> cos, sin [s, b, 1, head_dim] in fp32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device)
    inv_freq = 1.0 / (base ** (exponents / head_dim))
    freqs = position_ids.t().float().unsqueeze(-1) * inv_freq  # [s, b, hd/2]
    emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(2)
    return emb.cos(), emb.sin()


def _rotate_half(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t [s, b, heads, hd] rotated by cos/sin [s, b, 1, hd] (cast to t's dtype, as Megatron)."""
    return t * cos.to(t.dtype) + _rotate_half(t) * sin.to(t.dtype)
