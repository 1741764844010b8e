"""Causal attention of one zigzag query chunk over all the keys before its end, without a mask.

Legend: b batch, hs query heads, gs kv heads (GQA: hs a multiple of gs), c chunk length, L keys
up to the chunk's end (a multiple of c; the last c are the chunk's own, the "diagonal").

On a GPU, SDPA with torch's lower-right CausalBias runs the flash or memory-efficient kernel and
builds no mask. On the CPU, the same call materialises the c x L mask (13 bytes per element while
it runs, 4 kept for backward) and takes the slower masked kernel. So on the CPU the chunk is two
calls of the CPU flash kernel, which needs no mask: the prefix keys unmasked, the diagonal block
causal; their outputs merge by their log-sum-exps. Backward is the flash backward of each block
with the merged output and log-sum-exp (as ring attention does): exact, and O(c x block) memory.
"""

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
_flash_cpu_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


class _PrefixAndDiagonal(torch.autograd.Function):
    """q [b, hs, c, hd] over prefix keys [b, gs, L - c, hd] (all visible) and diagonal keys
    [b, gs, c, hd] (causal)."""

    @staticmethod
    def forward(ctx, q, k_prefix, v_prefix, k_diagonal, v_diagonal):
        out_p, lse_p = _flash_cpu(q, k_prefix, v_prefix, 0.0, False)
        out_d, lse_d = _flash_cpu(q, k_diagonal, v_diagonal, 0.0, True)
        lse = torch.logaddexp(lse_p, lse_d)  # [b, hs, c]
        merge = torch.promote_types(q.dtype, torch.float32)  # bf16 outputs merge in fp32
        out = (out_p.to(merge) * torch.exp(lse_p - lse).unsqueeze(-1).to(merge)
               + out_d.to(merge) * torch.exp(lse_d - lse).unsqueeze(-1).to(merge)).to(q.dtype)
        ctx.save_for_backward(q, k_prefix, v_prefix, k_diagonal, v_diagonal, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k_prefix, v_prefix, k_diagonal, v_diagonal, out, lse = ctx.saved_tensors
        dq_p, dk_p, dv_p = _flash_cpu_backward(grad_out, q, k_prefix, v_prefix, out, lse, 0.0,
                                               False)
        dq_d, dk_d, dv_d = _flash_cpu_backward(grad_out, q, k_diagonal, v_diagonal, out, lse,
                                               0.0, True)
        return dq_p + dq_d, dk_p, dv_p, dk_d, dv_d


def causal_chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [b, hs, c, hd], k/v [b, gs, L, hd]: query i of the chunk attends to keys up to
    L - c + i. Returns [b, hs, c, hd]."""
    c, length = q.shape[2], k.shape[2]
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(c, length),
                                              enable_gqa=True)
    if length == c:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    prefix = length - c  # the kernel reads strided views: the blocks are not copied
    return _PrefixAndDiagonal.apply(q, k[:, :, :prefix], v[:, :, :prefix], k[:, :, prefix:],
                                    v[:, :, prefix:])
