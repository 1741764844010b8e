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
