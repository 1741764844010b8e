"""The planner's compute model: FLOPs of one training step, the model's and what recompute adds.

Model FLOPs per token: 6 x the matmul parameters (the layers' weights and the output layer,
counted once even when tied: the embedding lookup does no arithmetic) plus causal attention,
12 L (nh hd) S^2 / 2 per sequence, i.e. 6 L nh hd S per token. Hardware FLOPs add the forward
work that backward repeats, counted by torch's FlopCounterMode in tests/test_recompute.py:
TSP recomputes the output layer's logits in every mode (the [tokens, vocabulary] logits never
exist) and, by its mode (layers/recompute.py), the qkv GEMM, the attention core and the fc1 GEMM;
never an output projection. Megatron's full recompute repeats each layer's whole forward.
"""

from typing import Sequence

from megatron_tsp.layers.recompute import Recompute
from megatron_tsp.config import Qwen3Config
from megatron_tsp.planner.transfers import Layout, attention_weights, mlp_weights


def _layer_core_attention_flops(cfg: Qwen3Config, S: int) -> int:
    """Forward FLOPs of one layer's causal attention per token (scores and weighted values,
    half of S^2)."""
    return 2 * cfg.num_attention_heads * cfg.kv_channels * S


def _core_attention_flops(cfg: Qwen3Config, S: int) -> int:
    return cfg.num_layers * _layer_core_attention_flops(cfg, S)


def model_flops_per_token(cfg: Qwen3Config, S: int) -> int:
    layers = cfg.num_layers * (attention_weights(cfg) + mlp_weights(cfg))
    return 6 * (layers + cfg.padded_vocab_size(1) * cfg.hidden_size) \
        + 3 * _core_attention_flops(cfg, S)


def tsp_recompute_flops_per_token(cfg: Qwen3Config, S: int,
                                  layers: Sequence[Recompute] = ()) -> int:
    """What TSP's backward repeats of the forward, per token; `layers`: each layer's recompute
    choice (empty: none recomputes)."""
    h = cfg.hidden_size
    flops = 2 * cfg.padded_vocab_size(1) * h
    for recompute in layers:
        if recompute.qkv:
            flops += 2 * (cfg.num_attention_heads + 2 * cfg.num_query_groups) \
                * cfg.kv_channels * h
        if recompute.qkv or recompute.core_attn:
            flops += _layer_core_attention_flops(cfg, S)
        if recompute.fc1:
            flops += 2 * 2 * cfg.ffn_hidden_size * h
    return flops


def hardware_flops_per_token(layout: Layout, cfg: Qwen3Config, S: int) -> int:
    """Model FLOPs plus what `layout`'s recompute repeats, per token of the whole model."""
    if layout.scheme == "tsp":
        return model_flops_per_token(cfg, S) + tsp_recompute_flops_per_token(
            cfg, S, layout.layer_recomputes(cfg.num_layers))
    extra = 0
    if layout.recompute == "full":
        layers = cfg.num_layers * (attention_weights(cfg) + mlp_weights(cfg))
        extra = 2 * layers + _core_attention_flops(cfg, S)
    return model_flops_per_token(cfg, S) + extra
