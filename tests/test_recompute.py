"""What TSP keeps for backward, chosen by Megatron's recompute flags (layers/recompute.py).

Every choice computes what one process computes with everything kept (loss and every gradient,
fp32, 1e-5) at D = 2 and 4; and no choice runs a GEMM in backward whose output is not needed:
the matmul FLOPs of a TSP step, counted by torch's FlopCounterMode, are plain Megatron-Core
GPTModel's plus exactly the forward GEMMs the choice recomputes, plus the output layer's logits
(recomputed in backward in every mode, so that the [tokens, vocabulary] logits never exist).
"""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from megatron_tsp import parallel_state as ps
from megatron_tsp.layers.recompute import layer_recomputes
from megatron_tsp.config_adapters import transformer_config_from_qwen3
from megatron_tsp.models.mcore_gpt import build_mcore_qwen3
from tests.dist import run_distributed
from tests.tsp_harness import full_batch, full_grads, tiny_config, train_step

SEED, BATCH, SEQ = 7, 2, 16
# Megatron's flags as TransformerConfig fields, and TSP's --tsp-recompute-activations
MODES = {
    "keep everything": {},
    "activations": {"activations": True},
    "selective core_attn": {"recompute_granularity": "selective"},
    "selective mlp": {"recompute_granularity": "selective", "recompute_modules": ["mlp"]},
    "selective both + activations": {"recompute_granularity": "selective",
                                     "recompute_modules": ["core_attn", "mlp"],
                                     "activations": True},
    "full uniform": {"recompute_granularity": "full", "recompute_method": "uniform",
                     "recompute_num_layers": 1},
    "full block 1": {"recompute_granularity": "full", "recompute_method": "block",
                     "recompute_num_layers": 1},
}
# kv groups > D, = 2, < D (multi-owner head-group steps); tied and untied tables
CONFIGS = [tiny_config(heads=8, groups=4, tied=False), tiny_config(heads=8, groups=1, tied=True)]


def _model(config, mode, tsp_size, dtype=torch.float32):
    from megatron_tsp.models.qwen3 import TSPQwen3Model
    fields = dict(MODES[mode])
    activations = fields.pop("activations", False)
    transformer_config = dataclasses.replace(
        transformer_config_from_qwen3(config, tsp_size, sequence_parallel=tsp_size > 1,
                                      params_dtype=dtype), **fields)
    model = TSPQwen3Model(config, transformer_config, dtype=dtype,
                          recompute_activations=activations)
    model.init_weights(SEED)
    return model


def _every_size():
    """On 4 ranks: {(D, mode): [(loss, grads) per config]} on rank 0."""
    results = {}
    for tsp_size in (4, 2, 1):
        ps.initialize_tsp(tsp_size)
        try:
            for mode in MODES if tsp_size > 1 else ["keep everything"]:
                runs = []
                for config in CONFIGS:
                    model = _model(config, mode, tsp_size)
                    mean, _ = train_step(model, full_batch(config.vocab_size, BATCH, SEQ))
                    runs.append((mean.item(), full_grads(model)))
                results[(tsp_size, mode)] = runs
        finally:
            ps.destroy_tsp()
    return results if torch.distributed.get_rank() == 0 else None


@pytest.fixture(scope="module")
def results():
    return run_distributed(_every_size, 4)[0]


@pytest.mark.parametrize("tsp_size", [2, 4])
@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_equals_one_device(results, mode, tsp_size):
    for config, (ref_loss, ref_grads), (loss, grads) in zip(
            CONFIGS, results[(1, "keep everything")], results[(tsp_size, mode)]):
        label = (mode, tsp_size, config.num_query_groups)
        assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), label
        assert grads.keys() == ref_grads.keys()
        for name, expected in ref_grads.items():
            assert expected.norm() > 0, (label, name)
            error = ((grads[name] - expected).norm() / expected.norm()).item()
            assert error < 1e-5, (label, name, error)


def test_megatron_flags_choose_the_layers():
    config = transformer_config_from_qwen3(tiny_config(num_layers=4))
    block = dataclasses.replace(config, recompute_granularity="full", recompute_method="block",
                                recompute_num_layers=3)
    assert [r.qkv and r.fc1 for r in layer_recomputes(block, 4)] == [True, True, True, False]
    mlp = dataclasses.replace(config, recompute_granularity="selective",
                              recompute_modules=["mlp"])
    assert {(r.fc1, r.core_attn) for r in layer_recomputes(mlp, 4)} == {(True, False)}


@pytest.mark.parametrize("fields,flag", [
    ({"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 2},
     "--recompute-num-layers"),
    ({"recompute_granularity": "selective", "recompute_modules": ["layernorm"]},
     "--recompute-modules layernorm"),
])
def test_what_tsp_cannot_honour_is_refused_by_name(fields, flag):
    config = dataclasses.replace(transformer_config_from_qwen3(tiny_config()), **fields)
    with pytest.raises(ValueError, match=flag):
        layer_recomputes(config, 2)


# --- FLOPs ------------------------------------------------------------------------------------

_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_LINEAR_OPS = ("aten.mm", "aten.addmm")


@register_flop_formula(_FLASH_CPU)
def _flash_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _matmul_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    counts = counter.get_flop_counts()["Global"]
    return sum(flops for op, flops in counts.items() if str(op) in _LINEAR_OPS)


def _flop_counts(config):
    """On one rank: the matmul FLOPs of one GPTModel step and of a TSP step in every mode."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    ps.initialize_tsp(1)
    try:
        model_parallel_cuda_manual_seed(SEED)
        batch = full_batch(config.vocab_size, BATCH, SEQ)
        gpt = build_mcore_qwen3(config)

        def gpt_step():
            tokens, labels, positions, mask = batch
            (gpt(tokens, positions, None, labels=labels) * mask).sum().backward()

        counts = {"gpt": _matmul_flops(gpt_step)}
        for mode in MODES:
            model = _model(config, mode, 1)
            counts[mode] = _matmul_flops(lambda: train_step(model, batch))
        return counts
    finally:
        ps.destroy_tsp()


def test_backward_redoes_no_gemm_it_does_not_need():
    # vocabulary a multiple of 128: GPTModel's padded table is TSP's
    config = tiny_config(heads=8, groups=2, tied=False, vocab_size=512, num_layers=4)
    counts = run_distributed(_flop_counts, 1, config)[0]
    tokens, h, L = BATCH * SEQ, config.hidden_size, config.num_layers
    qkv = 2 * tokens * h * (config.num_attention_heads + 2 * config.num_query_groups) \
        * config.kv_channels
    fc1 = 2 * tokens * h * 2 * config.ffn_hidden_size
    logits = 2 * tokens * h * config.padded_vocab_size(1)
    extra = {"keep everything": 0, "activations": 0, "selective core_attn": 0,
             "selective mlp": L * fc1, "selective both + activations": L * fc1,
             "full uniform": L * (qkv + fc1), "full block 1": qkv + fc1}
    for mode, recomputed in extra.items():
        assert counts[mode] == counts["gpt"] + logits + recomputed, (mode, counts)
