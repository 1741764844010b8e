"""Rotary position embedding (rotate-half, full head dim) at the GLOBAL positions of tokens,
plain or with YaRN scaling."""

from typing import Optional, Tuple

import torch
# Megatron's own YaRN arithmetic, so that its flags mean here exactly what they mean there
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
    _yarn_find_correction_range, _yarn_linear_ramp_mask)

from megatron_tsp.config import YarnScaling


def _inverse_frequencies(head_dim: int, base: float, device: torch.device,
                         yarn: Optional[YarnScaling]) -> torch.Tensor:
    """[head_dim / 2] fp32 on `device`; with YaRN, the low frequencies (beyond the correction
    range) divided by the factor, the high ones kept, a linear ramp between."""
    wavelengths = base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
                           / head_dim)  # over 2 pi
    frequencies = 1.0 / wavelengths
    if yarn is None:
        return frequencies
    interpolated = 1.0 / (yarn.factor * wavelengths)
    low, high = _yarn_find_correction_range(
        yarn.beta_fast, yarn.beta_slow, head_dim, base, yarn.original_max_position_embeddings,
        yarn.correction_range_round_to_int)
    kept = 1.0 - _yarn_linear_ramp_mask(low, high, head_dim // 2, device=device)
    return interpolated * (1 - kept) + frequencies * kept


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, base: float,
                   yarn: Optional[YarnScaling] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """position_ids [b, s] -> cos, sin [s, b, 1, head_dim] in fp32, on the positions' device;
    with YaRN both are multiplied by its attention factor (as Megatron and transformers do)."""
    inv_freq = _inverse_frequencies(head_dim, base, position_ids.device, yarn)
    freqs = position_ids.t().float().unsqueeze(-1) * inv_freq  # [s, b, hd/2]
    emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(2)
    if yarn is None:
        return emb.cos(), emb.sin()
    return emb.cos() * yarn.attention_factor, emb.sin() * yarn.attention_factor


def _rotate_half(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t [s, b, heads, hd] rotated by cos/sin [s, b, 1, hd] (cast to t's dtype, as Megatron)."""
    return t * cos.to(t.dtype) + _rotate_half(t) * sin.to(t.dtype)
