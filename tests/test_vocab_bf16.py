"""The streamed output layer's bf16 gradients on a confident model equal autograd of the same loss.

The loss is cross-entropy over the logits forward computes (a bf16 matmul). The reference takes
autograd of exactly that loss in float64: logits equal to the bf16 ones in value, with the
matmul's exact gradient. When the target's probability p is near 1, 1 - p is what the gradient
is made of, so a backward that rounds the logits differently from forward (fp32 logits against
forward's bf16 log-sum-exp) is off by tens of percent at p = 0.98.
"""

import torch

from megatron_tsp import parallel_state as ps
from tests.dist import run_distributed

TOKENS, HIDDEN, VOCAB = 512, 256, 4096


def _confident_batch():
    """hidden [s, 1, h] close to the rows of its labels [s, 1]: mean target probability ~0.98."""
    generator = torch.Generator().manual_seed(3)
    table = (torch.randn(VOCAB, HIDDEN, generator=generator) * 0.02).bfloat16()
    labels = torch.randint(0, VOCAB, (TOKENS, 1), generator=generator)
    hidden = table.float()[labels] * 130 + torch.randn(TOKENS, 1, HIDDEN, generator=generator)
    return hidden.bfloat16(), table, labels


def _reference(hidden, table, labels):
    x64 = hidden.double().requires_grad_()
    w64 = table.double().requires_grad_()
    exact = x64 @ w64.t()
    logits = exact + ((hidden @ table.t()).double() - exact).detach()  # bf16 values
    loss = torch.logsumexp(logits, -1) - logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    loss.sum().backward()
    target_probability = torch.exp(-loss.detach()).mean().item()
    return x64.grad, w64.grad, target_probability


def _tsp_gradients(hidden, table, labels):
    from megatron_tsp.layers.vocab import vocab_cross_entropy
    ps.initialize_tsp(1)
    x = hidden.clone().requires_grad_()
    w = table.clone().requires_grad_()
    vocab_cross_entropy(x, w, labels, VOCAB).sum().backward()
    ps.destroy_tsp()
    return x.grad, w.grad


def _relative_error(actual, expected):
    return ((actual.double() - expected).norm() / expected.norm()).item()


def test_output_layer_gradient_on_a_confident_model():
    hidden, table, labels = _confident_batch()
    grad_x, grad_w, target_probability = _reference(hidden, table, labels)
    assert 0.95 < target_probability < 0.995, target_probability  # the regime that needs care
    tsp_x, tsp_w = run_distributed(_tsp_gradients, 1, hidden, table, labels)[0]
    assert tsp_x.dtype == tsp_w.dtype == torch.bfloat16
    # what is left is the bf16 rounding of the returned gradients (2^-9 relative per element)
    assert _relative_error(tsp_x, grad_x) < 1e-2
    assert _relative_error(tsp_w, grad_w) < 1e-2
