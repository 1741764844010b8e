"""The same full model for every scheme: weights drawn from (seed, parameter name), then cut.

Mirrors TSPQwen3Model.init_weights (normal(0, std), output projections std / sqrt(2 L), norms
ones), so every scheme trains the same model on the same data and reports the same loss, which
the benchmark checks. Vocabulary tables have the real vocabulary's rows; callers pad them.
"""

import math
from typing import Dict

import torch

from megatron_tsp.layers.linear import draw_full_normal
from megatron_tsp.config import Qwen3Config

_OUTPUT_PROJECTIONS = ("linear_proj.weight", "linear_fc2.weight")


def full_weight_shapes(config: Qwen3Config) -> Dict[str, tuple]:
    """GPTModel parameter names (local spec) -> full shapes, vocabulary unpadded."""
    h, hd, F = config.hidden_size, config.kv_channels, config.ffn_hidden_size
    nh, ng = config.num_attention_heads, config.num_query_groups
    shapes = {"embedding.word_embeddings.weight": (config.vocab_size, h)}
    for i in range(config.num_layers):
        p = f"decoder.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attention.linear_qkv.weight": ((nh + 2 * ng) * hd, h),
            p + "self_attention.q_layernorm.weight": (hd,),
            p + "self_attention.k_layernorm.weight": (hd,),
            p + "self_attention.linear_proj.weight": (h, nh * hd),
            p + "pre_mlp_layernorm.weight": (h,),
            p + "mlp.linear_fc1.weight": (2 * F, h),
            p + "mlp.linear_fc2.weight": (h, F),
        })
    shapes["decoder.final_layernorm.weight"] = (h,)
    if not config.tie_word_embeddings:
        shapes["output_layer.weight"] = (config.vocab_size, h)
    return shapes


def full_weights(config: Qwen3Config, seed: int) -> Dict[str, torch.Tensor]:
    """Every full weight of the model, identical on every rank and every scheme."""
    out = {}
    for name, shape in full_weight_shapes(config).items():
        if len(shape) == 1:
            out[name] = torch.ones(shape)
            continue
        std = config.init_method_std
        if name.endswith(_OUTPUT_PROJECTIONS):
            std /= math.sqrt(2.0 * config.num_layers)
        # the tied output layer IS the embedding table, drawn under the embedding's name
        out[name] = draw_full_normal(seed, name, shape, std)
    return out


def pad_rows(table: torch.Tensor, rows: int) -> torch.Tensor:
    """A vocabulary table zero-padded to `rows` rows (Megatron's padded vocabulary)."""
    out = torch.zeros((rows,) + tuple(table.shape[1:]), dtype=table.dtype)
    out[:table.shape[0]] = table
    return out


def tensor_parallel_shard(name: str, full: torch.Tensor, partition_dim: int, rank: int,
                          size: int) -> torch.Tensor:
    """Rank's piece of a full weight as Megatron TP cuts it (fc1 as [gate_r; up_r])."""
    if "linear_fc1" in name:
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(size)[rank], up.chunk(size)[rank]])
    return full.chunk(size, dim=partition_dim)[rank]
