"""Qwen3 dense weights: Hugging Face Qwen3ForCausalLM <-> Megatron-Core GPTModel (local spec, TP=1).

Shapes: H hidden, V vocab, F ffn, nh query heads, ng kv groups, r = nh / ng, hd head dim.
The converters stream: they fetch one tensor by name at a time and yield (name, tensor) pairs,
so a caller can read lazily from safetensors files and write as it goes.
"""

from typing import Callable, Iterator

import torch
from torch import Tensor

from megatron_tsp.config import Qwen3Config

Getter = Callable[[str], Tensor]

# config.json key -> Qwen3Config field; a guessed value would silently build another model
_REQUIRED_KEYS = {
    "num_hidden_layers": "num_layers",
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_query_groups",
    "intermediate_size": "ffn_hidden_size",
    "vocab_size": "vocab_size",
}
# config.json key -> (Qwen3Config field, transformers' Qwen3Config default), so we read a
# config exactly as transformers (4.x and 5.x) would
_OPTIONAL_KEYS = {
    "head_dim": ("kv_channels", 128),
    "rms_norm_eps": ("norm_epsilon", 1e-6),
    "max_position_embeddings": ("max_position_embeddings", 32768),
    "tie_word_embeddings": ("tie_word_embeddings", False),
    "initializer_range": ("init_method_std", 0.02),
}

_EMBED_HF, _EMBED_MC = "model.embed_tokens.weight", "embedding.word_embeddings.weight"
_NORM_HF, _NORM_MC = "model.norm.weight", "decoder.final_layernorm.weight"
_HEAD_HF, _HEAD_MC = "lm_head.weight", "output_layer.weight"
_QKV_MC, _FC1_MC = "self_attention.linear_qkv.weight", "mlp.linear_fc1.weight"
# per-layer tensors that only change name: (HF suffix, Megatron suffix)
_LAYER_RENAMES = (
    ("input_layernorm.weight", "input_layernorm.weight"),
    ("self_attn.q_norm.weight", "self_attention.q_layernorm.weight"),
    ("self_attn.k_norm.weight", "self_attention.k_layernorm.weight"),
    ("self_attn.o_proj.weight", "self_attention.linear_proj.weight"),
    ("post_attention_layernorm.weight", "pre_mlp_layernorm.weight"),
    ("mlp.down_proj.weight", "mlp.linear_fc2.weight"),
)


def _rope_theta(hf_config: dict, path: str) -> float:
    """rope_theta (transformers 4.x) or rope_parameters["rope_theta"] (5.x); plain RoPE only."""
    params = hf_config.get("rope_parameters") or {}
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"{path}: rope_parameters.rope_type {params['rope_type']!r} is not "
                         "supported; only plain RoPE ('default') is")
    if hf_config.get("rope_scaling"):
        raise ValueError(f"{path}: rope_scaling {hf_config['rope_scaling']!r} is not supported")
    thetas = {float(v) for v in (hf_config.get("rope_theta"), params.get("rope_theta"))
              if v is not None}
    if not thetas:
        # transformers would fall back to 10000, which no published Qwen3 uses
        raise ValueError(f"{path}: missing 'rope_theta' (or 'rope_parameters.rope_theta')")
    if len(thetas) > 1:
        raise ValueError(f"{path}: rope_theta and rope_parameters.rope_theta disagree: {thetas}")
    return thetas.pop()


def _reject_unsupported(hf_config: dict, path: str) -> None:
    """Features of the HF Qwen3 class that dense Qwen3 checkpoints (and our model) do not use."""
    if hf_config.get("attention_bias"):
        raise ValueError(f"{path}: 'attention_bias' is true; Qwen3 dense models have no biases")
    if hf_config.get("use_sliding_window"):
        raise ValueError(f"{path}: 'use_sliding_window' is true; only full attention is supported")
    if any(t != "full_attention" for t in hf_config.get("layer_types") or ()):
        raise ValueError(f"{path}: 'layer_types' has non-full attention layers")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: 'hidden_act' is {hf_config['hidden_act']!r}, not 'silu'")


def qwen3_config_from_hf(hf_config: dict, path_for_errors: str) -> Qwen3Config:
    """The Qwen3Config of a Hugging Face config.json dict; ValueError naming the key and file."""
    path = path_for_errors
    model_type = hf_config.get("model_type")
    if model_type != "qwen3":
        raise ValueError(f"{path}: model_type {model_type!r} is not 'qwen3'")
    _reject_unsupported(hf_config, path)
    fields = {}
    for key, field in _REQUIRED_KEYS.items():
        if hf_config.get(key) is None:
            raise ValueError(f"{path}: missing required key {key!r}")
        fields[field] = hf_config[key]
    for key, (field, default) in _OPTIONAL_KEYS.items():
        value = hf_config.get(key)
        fields[field] = default if value is None else value
    return Qwen3Config(rotary_base=_rope_theta(hf_config, path), **fields)


def hf_config_from_qwen3(config: Qwen3Config, dtype: str = "bfloat16") -> dict:
    """A config.json dict for Qwen3ForCausalLM that transformers 4.x and 5.x both read."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_query_groups,
        "head_dim": config.kv_channels,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.norm_epsilon,
        "tie_word_embeddings": config.tie_word_embeddings,
        # 4.x reads rope_theta, 5.x reads rope_parameters
        "rope_theta": config.rotary_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rotary_base},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": config.num_layers,
        "initializer_range": config.init_method_std,
        "use_cache": True,
        # 4.x reads torch_dtype, 5.x reads dtype
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def _qkv_sizes(config: Qwen3Config) -> tuple[int, int, int]:
    ng, hd = config.num_query_groups, config.kv_channels
    return ng, config.num_attention_heads // ng * hd, hd


def interleave_qkv(q: Tensor, k: Tensor, v: Tensor, config: Qwen3Config) -> Tensor:
    """q [nh*hd, H], k and v [ng*hd, H] -> linear_qkv [ng*(r+2)*hd, H], per group [q heads, k, v].

    This is the order SelfAttention.get_query_key_value_tensors splits its output in.
    """
    ng, q_rows, hd = _qkv_sizes(config)
    if q.shape[0] != ng * q_rows or k.shape[0] != ng * hd or v.shape[0] != ng * hd:
        raise ValueError(f"q/k/v rows {q.shape[0]}/{k.shape[0]}/{v.shape[0]} do not fit "
                         f"{config.num_attention_heads} heads, {ng} groups, head dim {hd}")
    groups = (q.reshape(ng, q_rows, -1), k.reshape(ng, hd, -1), v.reshape(ng, hd, -1))
    return torch.cat(groups, dim=1).reshape(-1, q.shape[-1])


def split_qkv(qkv: Tensor, config: Qwen3Config) -> tuple[Tensor, Tensor, Tensor]:
    """linear_qkv [ng*(r+2)*hd, H] -> q [nh*hd, H], k [ng*hd, H], v [ng*hd, H]."""
    ng, q_rows, hd = _qkv_sizes(config)
    if qkv.shape[0] != ng * (q_rows + 2 * hd):
        raise ValueError(f"linear_qkv has {qkv.shape[0]} rows, expected {ng * (q_rows + 2 * hd)}")
    q, k, v = qkv.reshape(ng, q_rows + 2 * hd, -1).split([q_rows, hd, hd], dim=1)
    # clone: with one group these would be views of one storage, which safetensors refuses
    return tuple(t.reshape(-1, qkv.shape[-1]).clone() for t in (q, k, v))


def _exact_vocab(t: Tensor, config: Qwen3Config, name: str) -> Tensor:
    if t.shape[0] != config.vocab_size:
        raise ValueError(f"{name} has {t.shape[0]} rows, config vocab_size is {config.vocab_size}")
    return t


def _unpadded_vocab(t: Tensor, config: Qwen3Config, name: str) -> Tensor:
    """Drop Megatron's padding rows (those past vocab_size)."""
    if t.shape[0] < config.vocab_size:
        raise ValueError(f"{name} has {t.shape[0]} rows, fewer than vocab_size {config.vocab_size}")
    # clone so the result does not keep (or save) the whole padded table
    return t[:config.vocab_size].clone() if t.shape[0] > config.vocab_size else t


def tensor_count(config: Qwen3Config, hf: bool) -> int:
    """How many tensors megatron_to_hf (hf) or hf_to_megatron yields: per layer, the renamed
    ones plus q, k, v and gate, up (HF) or linear_qkv and linear_fc1 (Megatron)."""
    per_layer = len(_LAYER_RENAMES) + (5 if hf else 2)
    return 2 + per_layer * config.num_layers + (0 if config.tie_word_embeddings else 1)


def hf_to_megatron(get_hf: Getter, config: Qwen3Config) -> Iterator[tuple[str, Tensor]]:
    """Megatron-named tensors from HF ones, one layer at a time; the vocabulary is not padded."""
    yield _EMBED_MC, _exact_vocab(get_hf(_EMBED_HF), config, _EMBED_HF)
    for i in range(config.num_layers):
        hf, mc = f"model.layers.{i}.", f"decoder.layers.{i}."
        for hf_name, mc_name in _LAYER_RENAMES:
            yield mc + mc_name, get_hf(hf + hf_name)
        q, k, v = (get_hf(f"{hf}self_attn.{p}_proj.weight") for p in "qkv")
        yield mc + _QKV_MC, interleave_qkv(q, k, v, config)
        # Megatron's swiglu applies silu to the first half of fc1's output
        yield mc + _FC1_MC, torch.cat([get_hf(hf + "mlp.gate_proj.weight"),
                                       get_hf(hf + "mlp.up_proj.weight")])
    yield _NORM_MC, get_hf(_NORM_HF)
    if not config.tie_word_embeddings:
        yield _HEAD_MC, _exact_vocab(get_hf(_HEAD_HF), config, _HEAD_HF)


def megatron_to_hf(get_mcore: Getter, config: Qwen3Config) -> Iterator[tuple[str, Tensor]]:
    """HF-named tensors from Megatron ones, one layer at a time; padded vocab rows are dropped."""
    yield _EMBED_HF, _unpadded_vocab(get_mcore(_EMBED_MC), config, _EMBED_MC)
    for i in range(config.num_layers):
        hf, mc = f"model.layers.{i}.", f"decoder.layers.{i}."
        for hf_name, mc_name in _LAYER_RENAMES:
            yield hf + hf_name, get_mcore(mc + mc_name)
        for p, t in zip("qkv", split_qkv(get_mcore(mc + _QKV_MC), config)):
            yield f"{hf}self_attn.{p}_proj.weight", t
        gate, up = get_mcore(mc + _FC1_MC).chunk(2)
        yield hf + "mlp.gate_proj.weight", gate.clone()  # clone: separate storages, see split_qkv
        yield hf + "mlp.up_proj.weight", up.clone()
    yield _NORM_HF, get_mcore(_NORM_MC)
    if not config.tie_word_embeddings:
        yield _HEAD_HF, _unpadded_vocab(get_mcore(_HEAD_MC), config, _HEAD_MC)


def _getter(state_dict: dict, kind: str) -> Getter:
    def get(name: str) -> Tensor:
        if name not in state_dict:
            raise ValueError(f"the {kind} state dict has no tensor {name!r}")
        return state_dict[name]
    return get


def hf_state_dict_to_megatron(state_dict: dict, config: Qwen3Config) -> dict:
    """A whole HF state dict as a Megatron one (lm_head is ignored when tied)."""
    return dict(hf_to_megatron(_getter(state_dict, "Hugging Face"), config))


def megatron_state_dict_to_hf(state_dict: dict, config: Qwen3Config) -> dict:
    """A whole Megatron state dict as an HF one (no lm_head when tied, as HF saves it)."""
    return dict(megatron_to_hf(_getter(state_dict, "Megatron"), config))
