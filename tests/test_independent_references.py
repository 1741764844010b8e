"""The TSP model equals plain megatron-core GPTModel (local spec, tensor-parallel size 1) with the
same weights: GQA, tied embeddings with kv groups < D, MHA, and a padded vocabulary, at D = 2
and 4. Loss (1e-5 relative) and every gradient (relative norm error
< 1e-5), fp32, at D = 2 and 4.

The padded vocabulary: TSP pads the tables to a multiple of 128 x D and masks the logits of the
padded rows; GPTModel would softmax over its padded rows too (zero weights, logit 0), so it is
built with the real vocabulary (make_vocab_size_divisible_by = 1: 500 rows, no padding) and is
the unpadded model TSP must equal. This keeps every gradient comparable by name (transformers
would need a name and layout conversion of each gradient); transformers' loss is checked in
tests/test_hf_parity.py. TSP's gradient rows of the padding must be exactly zero.

One launch of 4 real gloo processes runs D = 4, then D = 2, then GPTModel (D = 1) on the full
weights TSP drew at D = 4.
"""

import pytest
import torch

from megatron_tsp import parallel_state as ps
from tests.dist import run_distributed
from tests.tsp_harness import full_batch, full_grads, gptmodel_step, tiny_config, train_step

CASES = {
    # 512 = 128 x 4: no vocabulary padding at D = 2 or 4
    "untied-groups2": tiny_config(heads=8, groups=2, tied=False, vocab_size=512),
    "tied-groups1": tiny_config(heads=8, groups=1, tied=True, vocab_size=512),
    "tied-groups2": tiny_config(heads=8, groups=2, tied=True, vocab_size=512),
    "untied-mha": tiny_config(heads=8, groups=8, tied=False, vocab_size=512),
    # 500 rows padded to 512 at D = 2 and to 1024 at D = 4
    "padded-vocab-tied": tiny_config(heads=8, groups=2, tied=True, vocab_size=500),
    "padded-vocab-untied": tiny_config(heads=8, groups=4, tied=False, vocab_size=500),
}
SEED, BATCH, SEQ = 5, 2, 32
TSP_SIZES = (2, 4)
VOCAB_TABLES = ("embedding.word_embeddings.weight", "output_layer.weight")


def _tsp_step(config):
    from megatron_tsp.models.full_weights import full_state_dict
    from megatron_tsp.models.qwen3 import TSPQwen3Model
    model = TSPQwen3Model(config)
    model.init_weights(SEED)
    weights = full_state_dict(model)  # the real vocabulary's rows only
    mean, _ = train_step(model, full_batch(config.vocab_size, BATCH, SEQ))
    return {"weights": weights, "loss": mean.item(), "grads": full_grads(model),
            "padded_vocab_size": model.padded_vocab_size}


def _all_cases(cases):
    """Worker on 4 ranks: {"tsp": {D: {case: result}}, "gptmodel": {case: result}} on rank 0."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    out = {"tsp": {}}
    for tsp_size in (4, 2):
        ps.initialize_tsp(tsp_size)
        try:
            out["tsp"][tsp_size] = {name: _tsp_step(cfg) for name, cfg in cases.items()}
        finally:
            ps.destroy_tsp()
    ps.initialize_tsp(1)
    try:
        model_parallel_cuda_manual_seed(0)
        out["gptmodel"] = {}
        for name, cfg in cases.items():
            loss, grads = gptmodel_step(cfg, out["tsp"][4][name]["weights"], BATCH, SEQ)
            out["gptmodel"][name] = {"loss": loss, "grads": grads}
    finally:
        ps.destroy_tsp()
    return out if torch.distributed.get_rank() == 0 else None


@pytest.fixture(scope="module")
def results():
    return run_distributed(_all_cases, 4, CASES)[0]


@pytest.mark.parametrize("case", list(CASES))
def test_tsp_equals_megatron_gptmodel(results, case):
    config, reference = CASES[case], results["gptmodel"][case]
    for tsp_size in TSP_SIZES:
        got, label = results["tsp"][tsp_size][case], f"{case} D={tsp_size}"
        # D-independent init: the weights GPTModel got are the ones every D drew
        for name, weight in results["tsp"][4][case]["weights"].items():
            assert torch.equal(got["weights"][name], weight), (label, name)
        assert got["padded_vocab_size"] == config.padded_vocab_size(tsp_size)
        assert abs(got["loss"] - reference["loss"]) <= 1e-5 * reference["loss"], (
            label, got["loss"], reference["loss"])
        assert got["grads"].keys() == reference["grads"].keys(), label
        for name, expected in reference["grads"].items():
            actual = got["grads"][name]
            if name in VOCAB_TABLES:
                # rows past the vocabulary are padding: masked, so no gradient at all
                assert actual.shape[0] == got["padded_vocab_size"], (label, name)
                assert not actual[config.vocab_size:].any(), (label, name)
                actual = actual[:config.vocab_size]
            assert actual.shape == expected.shape, (label, name)
            assert expected.norm() > 0, (label, name, "no gradient at all")
            error = ((actual - expected).norm() / expected.norm()).item()
            assert error < 1e-5, (label, name, error)
