"""Packed documents (megatron_tsp.documents, layers/chunk_attention.py): every local chunk's
mask-free document attention equals SDPA with the attention mask Megatron's own dataset builds
(`_get_ltor_masks_and_position_ids` with reset_attention_mask), in values and gradients, at
D = 1, 2, 4 and 8, for documents cut by chunk boundaries, one-token documents, a sample with no
EOD and an EOD in the last position."""

import numpy
import pytest
import torch
import torch.nn.functional as F
from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

from megatron_tsp.documents import document_starts, packed_documents
from megatron_tsp.layers.attention import zigzag_causal_attention
from megatron_tsp.layout import local_chunks

HEADS, GROUPS, HEAD_DIM, EOD = 4, 2, 16, 0


def _tokens(lengths, S, generator):
    """A sample of documents of these lengths (each ending with EOD), the rest of the sequence
    filled by one last document with no EOD."""
    tokens = torch.randint(1, 50, (S,), generator=generator)
    ends = numpy.cumsum(lengths, dtype=numpy.int64) - 1
    tokens[torch.as_tensor(ends[ends < S])] = EOD
    return tokens


# documents per sample of S = 48 tokens; the chunk length is 24 / D (3 at D = 8)
CASES = {
    "cut by chunk boundaries": [[5, 13, 2, 20, 8], [17, 31]],
    "one-token documents": [[1, 1, 7, 1, 1, 1, 30, 1, 5], [1] * 48],
    "no EOD": [[], []],
    "EOD last": [[11, 37], [47, 1]],
}


def _megatron_mask(tokens):
    """[b, S, S] True where attention is allowed, from Megatron's dataset."""
    masks = [~_get_ltor_masks_and_position_ids(row, EOD, False, True, False, True)[0][0]
             for row in tokens]
    return torch.stack(masks)


def _reference(q, k_full, v_full, chunks, allowed):
    s, b, hs, hd = q.shape
    c = s // 2
    positions = torch.cat([torch.arange(chunk * c, (chunk + 1) * c) for chunk in chunks])
    mask = allowed[:, positions].unsqueeze(1)  # [b, 1, s, S]
    out = F.scaled_dot_product_attention(q.permute(1, 2, 0, 3), k_full.permute(1, 2, 0, 3),
                                         v_full.permute(1, 2, 0, 3), attn_mask=mask,
                                         enable_gqa=True)
    return out.permute(2, 0, 1, 3).reshape(s, b, hs * hd)


def _relative_error(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("D", [1, 2, 4, 8])
def test_every_chunk_equals_sdpa_with_megatrons_document_mask(D, case):
    S = 48
    generator = torch.Generator().manual_seed(D)
    tokens = torch.stack([_tokens(lengths, S, generator) for lengths in CASES[case]])
    b, c = tokens.shape[0], S // (2 * D)
    allowed = _megatron_mask(tokens)
    kv_full = torch.randn(S, 2, b, GROUPS, HEAD_DIM, generator=generator)
    for rank in range(D):
        chunks = local_chunks(rank, D)
        documents = packed_documents(tokens, EOD, chunks, 2 * D, torch.device("cpu"))
        q = torch.randn(2 * c, b, HEADS, HEAD_DIM, generator=generator)
        grad = torch.randn(2 * c, b, HEADS * HEAD_DIM, generator=generator)
        inputs = [t.clone().requires_grad_() for t in (q, kv_full)]
        out = zigzag_causal_attention(*inputs, documents=documents)
        grad_q, grad_kv = torch.autograd.grad(out, inputs, grad)
        reference_inputs = [t.clone().requires_grad_() for t in (q, kv_full[:, 0], kv_full[:, 1])]
        expected = _reference(*reference_inputs, chunks, allowed)
        expected_grads = torch.autograd.grad(expected, reference_inputs, grad)
        for name, actual, wanted in zip(("out", "dq", "dk", "dv"),
                                        (out, grad_q, grad_kv[:, 0], grad_kv[:, 1]),
                                        (expected, *expected_grads)):
            assert _relative_error(actual, wanted) < 1e-5, (case, D, rank, name)


def test_document_starts_follow_megatrons_positions():
    """A document starts where Megatron's reset position ids return to 0."""
    generator = torch.Generator().manual_seed(0)
    for lengths in [lengths for case in CASES.values() for lengths in case]:
        tokens = _tokens(lengths, 48, generator)
        positions = _get_ltor_masks_and_position_ids(tokens, EOD, True, False, False, False)[2]
        assert document_starts(tokens.numpy(), EOD).tolist() == \
            torch.nonzero(positions == 0).flatten().tolist(), lengths


def test_documents_are_read_on_the_host():
    with pytest.raises(ValueError, match="on the host"):
        packed_documents(torch.zeros(1, 8, dtype=torch.long, device="meta"), EOD, (0, 1), 2,
                         torch.device("cpu"))
