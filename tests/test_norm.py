"""The TSP RMSNorm equals autograd over the composed ops (Qwen3's definition) in value and
gradients, and keeps only its input and 1/rms per token for backward."""

import pytest
import torch

import megatron_tsp  # noqa: F401
from megatron_tsp.layers.norm import rms_norm


def _composed(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _run(norm, x, weight, grad):
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = norm(x, weight, 1e-6)
    out.backward(grad)
    kept = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved
            if t.untyped_storage().data_ptr() != weight.untyped_storage().data_ptr()}
    return out, x.grad, weight.grad, sum(kept.values())


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_equals_the_composed_norm_and_keeps_only_its_input(dtype, tolerance):
    torch.manual_seed(0)
    x = torch.randn(64, 2, 32, dtype=dtype) * 3
    weight = torch.rand(32, dtype=dtype) + 0.5
    grad = torch.randn(64, 2, 32, dtype=dtype)
    out, grad_x, grad_w, kept = _run(rms_norm, x, weight, grad)
    ref_out, ref_grad_x, ref_grad_w, ref_kept = _run(_composed, x, weight, grad)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad_x.float(), ref_grad_x.float(), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(grad_w.float(), ref_grad_w.float(), rtol=tolerance,
                               atol=tolerance * 64)
    rstd_bytes = 64 * 2 * 4
    assert kept == x.nbytes + rstd_bytes
    assert ref_kept >= kept + x.numel() * x.element_size()  # at least the normalised input more
