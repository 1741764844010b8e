"""Packed documents under TSP (--reset-position-ids, --reset-attention-mask, --eod-mask-loss):
the loss and every gradient at D = 2 and 4 equal one device (fp32, 1e-5), equal plain
megatron-core GPTModel fed the attention mask and position ids Megatron's own dataset builds
(`_get_ltor_masks_and_position_ids`, what GPTDataset calls), and equal each document run on its
own (the packed loss is the token-weighted mean of its documents' losses; the gradients add up
likewise). Documents are cut by the zigzag chunk boundaries at every D; a one-token document,
a sample with no EOD and an EOD in the last position are each in the batch.

(megatron.training.utils.get_ltor_masks_and_position_ids, the batch-level copy, is not used: in
megatron-core 0.19.2 it intersects the EOD indices with the pad indices by a bitwise `&` and so
finds no document boundary whenever the sample has no pad token.)

One launch of 4 gloo processes runs D = 4, 2 and 1, then the GPTModel references.
"""

import numpy
import pytest
import torch
from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

from megatron_tsp import parallel_state as ps
from megatron_tsp.documents import packed_documents
from megatron_tsp.layout import local_chunks
from tests.dist import run_distributed
from tests.tsp_harness import full_grads, gptmodel_on, tiny_config, train_step

CONFIG = tiny_config(heads=8, groups=2, tied=False, vocab_size=512)
SEED, SEQ, EOD = 5, 48, 0
# document lengths (each ends with EOD) per sample; the rest is one document with no EOD.
# Chunk boundaries fall every 6 tokens at D = 4, every 12 at D = 2.
SAMPLES = [
    [5, 13, 1, 20, 9],  # cut by chunk boundaries; a one-token document; EOD in the last position
    [],  # no EOD: one document, plain causal attention
    [1, 1, 30],  # one-token documents first, then a document with no EOD
]
CASES = {"reset positions": True, "positions run on": False}


def _batch(reset_position_ids: bool):
    """tokens, labels, positions, loss mask [b, S] and GPTModel's attention mask [b, 1, S, S],
    as Megatron's GPTDataset builds them with --eod-mask-loss --reset-attention-mask."""
    generator = torch.Generator().manual_seed(SEED)
    text = torch.randint(1, CONFIG.vocab_size, (len(SAMPLES), SEQ + 1), generator=generator)
    for row, lengths in zip(text, SAMPLES):
        row[torch.as_tensor(numpy.cumsum(lengths, dtype=numpy.int64) - 1)] = EOD
    tokens, labels = text[:, :-1], text[:, 1:]
    built = [_get_ltor_masks_and_position_ids(row, EOD, reset_position_ids, True, True, True)
             for row in tokens]
    mask, loss_mask, positions = (torch.stack([b[i] for b in built]) for i in range(3))
    return (tokens, labels, positions, loss_mask), mask


def _documents(tokens):
    """(sample, first, end) of every document of the batch."""
    for i, lengths in enumerate(SAMPLES):
        ends = [*numpy.cumsum(lengths, dtype=numpy.int64).tolist(), SEQ]
        firsts = [0, *ends[:-1]]
        yield from ((i, first, end) for first, end in zip(firsts, ends) if end > first)


def _tsp(batch, packed=True):
    from megatron_tsp.models.full_weights import full_state_dict
    from megatron_tsp.models.qwen3 import TSPQwen3Model
    D, p = ps.get_tsp_world_size(), ps.get_tsp_rank()
    model = TSPQwen3Model(CONFIG)
    model.init_weights(SEED)
    documents = packed_documents(batch[0], EOD, local_chunks(p, D), 2 * D, torch.device("cpu"))
    mean, _ = train_step(model, batch, documents if packed else None)
    return {"weights": full_state_dict(model), "loss": mean.item(), "grads": full_grads(model)}


def _each_document_alone(weights, batch):
    """GPTModel on every document as a sequence of its own (positions from 0, plain causal),
    each loss sum over the packed batch's token count: summed, the packed mean and gradients."""
    tokens, labels, _, loss_mask = batch
    count, loss, grads = loss_mask.sum(), 0.0, {}
    for i, first, end in _documents(tokens):
        piece = [t[i:i + 1, first:end] for t in (tokens, labels)]
        alone = (*piece, torch.arange(end - first)[None], loss_mask[i:i + 1, first:end])
        part, part_grads = gptmodel_on(CONFIG, weights, alone, token_count=count)
        loss += part
        for name, grad in part_grads.items():
            grads[name] = grads.get(name, 0) + grad
    return {"loss": loss, "grads": grads}


def _all_cases():
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    out = {}
    for case, reset_position_ids in CASES.items():
        batch, mask = _batch(reset_position_ids)
        out[case] = {}
        for tsp_size in (4, 2, 1):
            ps.initialize_tsp(tsp_size)
            try:
                out[case][tsp_size] = _tsp(batch)
            finally:
                ps.destroy_tsp()
        ps.initialize_tsp(1)
        try:
            out[case]["causal"] = _tsp(batch, packed=False)["grads"]
            model_parallel_cuda_manual_seed(0)
            weights = out[case][4]["weights"]
            loss, grads = gptmodel_on(CONFIG, weights, batch, attention_mask=mask)
            out[case]["gptmodel"] = {"loss": loss, "grads": grads}
            if reset_position_ids:
                out[case]["alone"] = _each_document_alone(weights, batch)
        finally:
            ps.destroy_tsp()
    return out if torch.distributed.get_rank() == 0 else None


@pytest.fixture(scope="module")
def results():
    return run_distributed(_all_cases, 4)[0]


def _assert_equal(got, reference, label):
    assert abs(got["loss"] - reference["loss"]) <= 1e-5 * reference["loss"], (
        label, got["loss"], reference["loss"])
    assert got["grads"].keys() == reference["grads"].keys(), label
    for name, expected in reference["grads"].items():
        assert expected.norm() > 0, (label, name, "no gradient at all")
        error = ((got["grads"][name] - expected).norm() / expected.norm()).item()
        assert error < 1e-5, (label, name, error)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tsp_size", [2, 4])
def test_packed_step_equals_one_device(results, case, tsp_size):
    _assert_equal(results[case][tsp_size], results[case][1], f"{case} D={tsp_size}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tsp_size", [1, 2, 4])
def test_packed_step_equals_gptmodel_with_megatrons_mask(results, case, tsp_size):
    _assert_equal(results[case][tsp_size], results[case]["gptmodel"], f"{case} D={tsp_size}")


@pytest.mark.parametrize("tsp_size", [1, 2, 4])
def test_packed_loss_is_the_token_weighted_mean_of_each_document_alone(results, tsp_size):
    case = "reset positions"
    _assert_equal(results[case][tsp_size], results[case]["alone"], f"D={tsp_size}")


def test_the_document_mask_changes_this_batch(results):
    """Without the documents, the same batch gives other gradients, a hundred times further than
    the equalities above allow: they could fail."""
    for case in CASES:
        packed, causal = results[case][1]["grads"], results[case]["causal"]
        errors = {name: ((causal[name] - grad).norm() / grad.norm()).item()
                  for name, grad in packed.items()}
        assert max(errors.values()) > 1e-3, (case, errors)


def test_reset_position_ids_alone_equal_transformers_given_those_positions():
    """--reset-position-ids without --reset-attention-mask: RoPE takes the restarted positions
    while attention runs across documents, as transformers' Qwen3 does when handed those
    position ids (Megatron's GPTModel feeds RoPE 0..S-1 whatever the position ids: with the
    document mask too the two agree, RoPE being relative inside a document)."""
    import torch.nn.functional as F
    from megatron_tsp.config_adapters import qwen3_config_from_hf
    from megatron_tsp.conversion.hf_qwen3 import hf_state_dict_to_megatron
    from tests.hf_models import hf_checkpoint_dict, hf_model
    from tests.test_hf_parity import tsp_logits_and_loss
    hf = hf_model(tie=False)
    config = qwen3_config_from_hf(hf.config.to_dict(), "config.json")
    state = hf_state_dict_to_megatron(hf_checkpoint_dict(hf), config)
    (tokens, labels, positions, _), _ = _batch(reset_position_ids=True)
    tokens, labels = tokens % config.vocab_size, labels % config.vocab_size
    with torch.no_grad():
        expected = hf(input_ids=tokens, position_ids=positions).logits
        from_zero = hf(input_ids=tokens).logits
    expected_loss = F.cross_entropy(expected.flatten(0, 1), labels.flatten()).item()
    assert (expected - from_zero).abs().max() > 1e-2  # the positions matter for this batch
    for tsp_size in (1, 2):
        logits, loss = run_distributed(tsp_logits_and_loss, tsp_size, tsp_size, config, state,
                                       tokens, labels, positions)[0]
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)
        assert abs(loss - expected_loss) <= 1e-5 * expected_loss, (tsp_size, loss)
