"""The mask-free zigzag attention (layers/chunk_attention.py) equals SDPA with an explicit causal
mask over global positions, in values and in gradients, for every chunk every rank holds at
D = 1, 2, 4 and 8, with GQA, in fp32 and bf16."""

import pytest
import torch
import torch.nn.functional as F

from megatron_tsp.layers.attention import zigzag_causal_attention
from megatron_tsp.layout import local_chunks

B, HEADS, GROUPS, HEAD_DIM = 2, 4, 2, 16


def _reference(q, k_full, v_full, chunks):
    """Each local query at its global position attends to every key at or before it."""
    s, _, hs, hd = q.shape
    c = s // 2
    positions = torch.cat([torch.arange(chunk * c, (chunk + 1) * c) for chunk in chunks])
    mask = positions[:, None] >= torch.arange(k_full.shape[0])[None, :]  # [s, S]
    out = F.scaled_dot_product_attention(q.permute(1, 2, 0, 3), k_full.permute(1, 2, 0, 3),
                                         v_full.permute(1, 2, 0, 3), attn_mask=mask,
                                         enable_gqa=True)
    return out.permute(2, 0, 1, 3).reshape(s, -1, hs * hd)


def _relative_error(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)],
                         ids=["fp32", "bf16"])
@pytest.mark.parametrize("D", [1, 2, 4, 8])
def test_every_chunk_equals_sdpa_with_an_explicit_mask(D, dtype, tolerance):
    c = 6
    generator = torch.Generator().manual_seed(D)
    S = 2 * D * c
    k_full, v_full = (torch.randn(S, B, GROUPS, HEAD_DIM, generator=generator).to(dtype)
                      for _ in range(2))
    for rank in range(D):
        chunks = local_chunks(rank, D)
        q = torch.randn(2 * c, B, HEADS, HEAD_DIM, generator=generator).to(dtype)
        grad = torch.randn(2 * c, B, HEADS * HEAD_DIM, generator=generator).to(dtype)
        inputs = [t.clone().requires_grad_() for t in (q, torch.stack([k_full, v_full], 1))]
        out = zigzag_causal_attention(*inputs, chunks=chunks)
        grad_q, grad_kv = torch.autograd.grad(out, inputs, grad)
        grads = grad_q, grad_kv[:, 0], grad_kv[:, 1]
        reference_inputs = [t.clone().requires_grad_() for t in (q, k_full, v_full)]
        expected = _reference(*reference_inputs, chunks)
        expected_grads = torch.autograd.grad(expected, reference_inputs, grad)
        assert out.dtype == dtype and out.shape == expected.shape
        for name, actual, wanted in zip(("out", "dq", "dk", "dv"), (out, *grads),
                                        (expected, *expected_grads)):
            assert _relative_error(actual, wanted) < tolerance, (D, rank, name)


def test_no_mask_is_built_on_the_cpu():
    """No tensor of the chunk-by-keys shape is allocated: the mask and the masked kernel's
    scores were such tensors (13 bytes per element while they ran)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    c, D = 8, 4
    S = 2 * D * c
    shapes = []

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(tensor, torch.Tensor):
                    shapes.append(tuple(tensor.shape))
            return out

    q = torch.randn(2 * c, B, HEADS, HEAD_DIM, requires_grad=True)
    kv_full = torch.randn(S, 2, B, GROUPS, HEAD_DIM, requires_grad=True)
    with Shapes():
        out = zigzag_causal_attention(q, kv_full, chunks=local_chunks(1, D))
        out.sum().backward()
    assert shapes, "nothing recorded"
    score_like = [shape for shape in shapes if len(shape) >= 2 and shape[-2] == c
                  and shape[-1] > HEAD_DIM and shape[-1] % c == 0]
    assert not score_like, score_like
