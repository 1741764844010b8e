"""Causal attention of one zigzag query chunk over all the keys before its end, without a mask.

Legend: b batch, hs query heads, gs kv heads (GQA: hs a multiple of gs), c chunk length, L keys
up to the chunk's end (a multiple of c; the last c are the chunk's own, the "diagonal").

On a GPU, SDPA with torch's lower-right CausalBias runs the flash or memory-efficient kernel and
builds no mask. On the CPU, the same call materialises the c x L mask (13 bytes per element while
it runs, 4 kept for backward) and takes the slower masked kernel. So on the CPU the chunk is two
calls of the CPU flash kernel, which needs no mask: the prefix keys unmasked, the diagonal block
causal; their outputs merge by their log-sum-exps. Backward is the flash backward of each block
with the merged output and log-sum-exp (as ring attention does): exact, and O(c x block) memory.

Packed documents (document_chunk_attention): a chunk's queries split into segments, one per
document (megatron_tsp.documents); on a GPU that can, one varlen flash call takes them all,
elsewhere each segment is the chunk attention above over its document's keys.
"""

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from torch.nn.attention.varlen import varlen_attn

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


def document_chunk_attention(q: torch.Tensor, kv_full: torch.Tensor, segments) -> torch.Tensor:
    """Packed documents: q [c, b, hs, hd] of one query chunk, kv_full [S, 2, b, gs, hd] in
    sequence order, `segments` that chunk's ChunkSegments per sample (megatron_tsp.documents).
    Each segment's queries attend causally to its document's keys up to the segment's end.

    Where the varlen flash kernel runs (see _varlen_runs), one call per sample over views of q
    and of the keys the chunk reads, its offsets already on the device and its maximum lengths
    host integers; elsewhere (the CPU, fp32 on a GPU, a GPU older than Ampere, ROCm) each
    segment through causal_chunk_attention. No mask is built either way.
    Returns [c, b, hs, hd]."""
    outputs = []
    for i, table in enumerate(segments):
        # the keys of the chunk's documents only: the kernel's backward sizes its dK/dV
        # buffers by the keys it is given
        keys = kv_full[table.key_start:table.key_start + table.k_offsets[-1], :, i]
        if not _varlen_runs(q):
            outputs.append(_segment_by_segment(q[:, i], keys, table))
            continue
        outputs.append(varlen_attn(q[:, i], keys[:, 0], keys[:, 1], table.cu_q, table.cu_k,
                                   table.max_q, table.max_k, window_size=(-1, 0),
                                   enable_gqa=True))
    return torch.stack(outputs, dim=1)


def _varlen_runs(q: torch.Tensor) -> bool:
    """torch's varlen attention is FlashAttention 2: CUDA (its ROCm build is not known to take
    windowed varlen calls), fp16 or bf16, Ampere or newer."""
    return (q.is_cuda and torch.version.hip is None
            and q.dtype in (torch.float16, torch.bfloat16)
            and torch.cuda.get_device_capability(q.device) >= (8, 0))


def _segment_by_segment(q: torch.Tensor, keys: torch.Tensor, table) -> torch.Tensor:
    """q [c, hs, hd], keys [L, 2, gs, hd] of one sample from the table's key_start -> [c, hs, hd]:
    one causal_chunk_attention call per segment, its offsets read on the host."""
    outputs = []
    for (q_first, q_end), (k_first, k_end) in table.segments():
        piece = keys[k_first - table.key_start:k_end - table.key_start]
        o = causal_chunk_attention(_heads_first(q[q_first:q_end]), _heads_first(piece[:, 0]),
                                   _heads_first(piece[:, 1]))
        outputs.append(o[0].transpose(0, 1))
    return torch.cat(outputs)


def _heads_first(t: torch.Tensor) -> torch.Tensor:
    """[n, heads, hd] -> [1, heads, n, hd] (a view)."""
    return t.transpose(0, 1).unsqueeze(0)
