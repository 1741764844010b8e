"""HF Qwen3 <-> Megatron GPTModel name/layout mapping: round trips, configs, and a numerical check.

Shapes: b batch, s sequence, H hidden, nh query heads, ng kv groups, r = nh / ng, hd head dim.
"""

import pytest
import torch
import torch.nn.functional as F
import transformers

import megatron_tsp  # noqa: F401  (compat patches first)
from megatron_tsp.config_adapters import hf_config_from_qwen3, qwen3_config_from_hf
from megatron_tsp.conversion.hf_qwen3 import (
    hf_state_dict_to_megatron, hf_to_megatron, megatron_state_dict_to_hf)
from tests.hf_models import HF_SHAPE, hf_checkpoint_dict, hf_model

@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_is_bit_identical(tie):
    model = hf_model(tie)
    config = qwen3_config_from_hf(model.config.to_dict(), "test")
    hf_sd = hf_checkpoint_dict(model)
    mc_sd = hf_state_dict_to_megatron(hf_sd, config)
    layer0 = "decoder.layers.0."
    assert mc_sd[layer0 + "self_attention.linear_qkv.weight"].shape == ((4 + 2 * 2) * 32, 64)
    assert mc_sd[layer0 + "mlp.linear_fc1.weight"].shape == (2 * 128, 64)
    assert ("output_layer.weight" in mc_sd) == (not tie)
    back = megatron_state_dict_to_hf(mc_sd, config)
    assert back.keys() == hf_sd.keys()
    for name, t in hf_sd.items():
        assert torch.equal(back[name], t), name


@pytest.mark.parametrize("tie", [True, False])
def test_streaming_reads_each_tensor_once(tie):
    model = hf_model(tie)
    config = qwen3_config_from_hf(model.config.to_dict(), "test")
    sd, reads = model.state_dict(), []
    names = [name for name, _ in hf_to_megatron(lambda n: reads.append(n) or sd[n], config)]
    assert sorted(reads) == sorted(hf_checkpoint_dict(model))  # tied: lm_head never read
    assert len(names) == len(set(names))


def test_padded_vocab_rows_are_dropped():
    model = hf_model(tie=False)
    config = qwen3_config_from_hf(model.config.to_dict(), "test")
    mc_sd = hf_state_dict_to_megatron(model.state_dict(), config)
    padded = config.padded_vocab_size(3)
    for name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        mc_sd[name] = torch.cat([mc_sd[name], torch.randn(padded - config.vocab_size, 64)])
    back = megatron_state_dict_to_hf(mc_sd, config)
    assert torch.equal(back["model.embed_tokens.weight"], model.model.embed_tokens.weight)
    assert torch.equal(back["lm_head.weight"], model.lm_head.weight)


@pytest.mark.parametrize("tie", [True, False])
def test_config_round_trip(tie):
    config = qwen3_config_from_hf(
        dict(HF_SHAPE, model_type="qwen3", rope_theta=1e6, tie_word_embeddings=tie), "c.json")
    assert (config.num_layers, config.hidden_size, config.num_attention_heads,
            config.num_query_groups, config.kv_channels, config.ffn_hidden_size,
            config.vocab_size, config.rotary_base, config.tie_word_embeddings) == (
        2, 64, 4, 2, 32, 128, 512, 1e6, tie)
    d = hf_config_from_qwen3(config)
    assert qwen3_config_from_hf(d, "c.json") == config
    hf = transformers.Qwen3Config(**d)
    assert qwen3_config_from_hf(hf.to_dict(), "c.json") == config
    assert (hf.head_dim, hf.num_key_value_heads, hf.tie_word_embeddings) == (32, 2, tie)


@pytest.mark.parametrize("rope", [{"rope_theta": 5e5},
                                  {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}])
def test_both_rope_forms_are_read(rope):
    assert qwen3_config_from_hf(dict(HF_SHAPE, model_type="qwen3", **rope), "c").rotary_base == 5e5


@pytest.mark.parametrize("change, words", [
    ({"model_type": "llama"}, ["llama", "c.json"]),
    ({"num_key_value_heads": None}, ["num_key_value_heads", "c.json"]),
    ({"rope_theta": None}, ["rope_theta", "c.json"]),
    ({"attention_bias": True}, ["attention_bias"]),
    ({"use_sliding_window": True}, ["use_sliding_window"]),
    ({"rope_scaling": {"rope_type": "linear", "factor": 4.0}}, ["rope_scaling", "linear"]),
])
def test_bad_configs_are_refused(change, words):
    d = {**HF_SHAPE, "model_type": "qwen3", "rope_theta": 1e6, **change}
    with pytest.raises(ValueError) as err:
        qwen3_config_from_hf({k: v for k, v in d.items() if v is not None}, "c.json")
    assert all(w in str(err.value) for w in words), err.value


# -- an independent forward pass over the Megatron-named weights ---------------------------------

def _rms(x, w, eps):
    return w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope(x, theta):
    """Rotate-half RoPE on x [b, heads, s, hd]: dims i and i + hd/2 form a pair."""
    s, hd = x.shape[-2:]
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angles = torch.outer(torch.arange(s, dtype=torch.float32), inv_freq).repeat(1, 2)
    x1, x2 = x.chunk(2, -1)
    return x * angles.cos() + torch.cat([-x2, x1], -1) * angles.sin()


def _megatron_forward(sd, c, tokens):
    """Logits [b, s, V] from a Megatron-named state dict, following Megatron's layouts."""
    (b, s), eps, hd, ng = tokens.shape, c.norm_epsilon, c.kv_channels, c.num_query_groups
    r = c.num_attention_heads // ng
    x = sd["embedding.word_embeddings.weight"][tokens]
    for i in range(c.num_layers):
        p = lambda name: sd[f"decoder.layers.{i}.{name}.weight"]  # noqa: E731
        h = _rms(x, p("input_layernorm"), eps)
        qkv = (h @ p("self_attention.linear_qkv").T).view(b, s, ng, (r + 2) * hd)
        q, k, v = qkv.split([r * hd, hd, hd], -1)  # per group: r query heads, then k, then v
        q = _rms(q.reshape(b, s, ng * r, hd), p("self_attention.q_layernorm"), eps)
        k = _rms(k, p("self_attention.k_layernorm"), eps)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = _rope(q, c.rotary_base), _rope(k, c.rotary_base)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + a.transpose(1, 2).reshape(b, s, -1) @ p("self_attention.linear_proj").T
        gate, up = (_rms(x, p("pre_mlp_layernorm"), eps) @ p("mlp.linear_fc1").T).chunk(2, -1)
        x = x + (F.silu(gate) * up) @ p("mlp.linear_fc2").T
    x = _rms(x, sd["decoder.final_layernorm.weight"], eps)
    return x @ sd.get("output_layer.weight", sd["embedding.word_embeddings.weight"]).T


def _swap_fc1_halves(sd):
    w = sd["decoder.layers.0.mlp.linear_fc1.weight"]
    sd["decoder.layers.0.mlp.linear_fc1.weight"] = torch.cat(w.chunk(2)[::-1])


def _swap_qk_norms(sd):
    a, b = (f"decoder.layers.0.self_attention.{n}_layernorm.weight" for n in "qk")
    sd[a], sd[b] = sd[b], sd[a]


@pytest.mark.parametrize("tie", [True, False])
def test_megatron_layout_reproduces_hf_logits(tie):
    model = hf_model(tie)
    config = qwen3_config_from_hf(model.config.to_dict(), "test")
    mc_sd = hf_state_dict_to_megatron(hf_checkpoint_dict(model), config)
    torch.manual_seed(1)
    tokens = torch.randint(0, config.vocab_size, (2, 24))
    with torch.no_grad():
        expected = model(tokens).logits
        got = _megatron_forward(mc_sd, config, tokens)
    assert expected.abs().mean() > 0.3  # logits large enough for atol to mean something
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # the check has teeth: a wrong layout is far outside the tolerance
    for corrupt in (_swap_fc1_halves, _swap_qk_norms):
        bad = dict(mc_sd)
        corrupt(bad)
        with torch.no_grad():
            assert (_megatron_forward(bad, config, tokens) - expected).abs().max() > 1e-2
