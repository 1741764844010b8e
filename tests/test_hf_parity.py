"""The TSP model equals an independent implementation: Hugging Face transformers' Qwen3.

A random Qwen3ForCausalLM built from a small config (head_dim != hidden / heads, GQA) is
converted to Megatron names and loaded into the TSP model at D = 1 and 2; logits (1e-4) and the
loss (1e-5 relative) must equal transformers' on the same tokens.
"""

import pytest
import torch
import torch.nn.functional as F

from megatron_tsp import parallel_state as ps
from megatron_tsp.config_adapters import qwen3_config_from_hf
from megatron_tsp.conversion.hf_qwen3 import hf_state_dict_to_megatron
from tests.dist import run_distributed
from tests.hf_models import hf_checkpoint_dict, hf_model

SEQ, BATCH = 32, 2


def tsp_logits_and_loss(tsp_size, config, megatron_state, tokens, labels, positions=None):
    """Rank body: the TSP model with the given weights at D = tsp_size -> (full logits of the
    real vocabulary, mean loss); positions 0..S-1 unless given [b, S]."""
    from megatron_tsp.layers.vocab import masked_token_mean
    from megatron_tsp.layout import gather_to_full, scatter_to_local
    from megatron_tsp.models.full_weights import load_full_state_dict
    from megatron_tsp.models.qwen3 import TSPQwen3Model
    ps.initialize_tsp(tsp_size)
    model = TSPQwen3Model(config)
    load_full_state_dict(model, megatron_state)
    if positions is None:
        positions = torch.arange(tokens.shape[1]).expand(*tokens.shape)
    local_tokens, local_labels, local_positions = (
        scatter_to_local(t, dim=1) for t in (tokens, labels, positions))
    with torch.no_grad():
        logits = gather_to_full(model(local_tokens, local_positions), dim=1)
        loss = model(local_tokens, local_positions, labels=local_labels)
        _, mean = masked_token_mean(loss, torch.ones_like(loss))
    ps.destroy_tsp()
    return logits[..., :config.vocab_size], mean.item()


@pytest.mark.parametrize("tie", [True, False])
def test_logits_and_loss_equal_transformers(tie):
    hf = hf_model(tie)
    config = qwen3_config_from_hf(hf.config.to_dict(), "config.json")
    megatron_state = hf_state_dict_to_megatron(hf_checkpoint_dict(hf), config)
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, config.vocab_size, (BATCH, SEQ + 1), generator=generator)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        expected_logits = hf(input_ids=inputs).logits
    expected_loss = F.cross_entropy(expected_logits.reshape(-1, config.vocab_size),
                                    labels.reshape(-1)).item()
    for tsp_size in (1, 2):
        logits, loss = run_distributed(tsp_logits_and_loss, tsp_size, tsp_size, config,
                                       megatron_state, inputs, labels)[0]
        torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-4)
        assert abs(loss - expected_loss) <= 1e-5 * expected_loss, (tsp_size, loss, expected_loss)
