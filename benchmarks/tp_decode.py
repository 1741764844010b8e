"""Tensor-parallel generation of the same model: the reference TSP's generation is compared
with (benchmarks/compare_decode.py).

Megatron TP's layout on the TSP model's own shards, which are Megatron's TP shards: rank r
computes the kv groups and query heads of its qkv rows, the columns of linear_proj and the MLP
and vocabulary shards it owns. The prompt is whole on every rank (no sequence parallelism), and
each rank caches its kv heads for every token. Needs kv groups a multiple of D (Megatron
replicates kv heads otherwise). Legend: S prompt tokens, b = 1, h hidden, Gr = G/D kv heads and
hr = nh/D query heads of a rank, hpg = nh/G, hd head dim.
"""

import time

import torch
import torch.nn.functional as F

from megatron_tsp import comm
from megatron_tsp import parallel_state as ps
from megatron_tsp.inference.decode import embed, logits as output_logits
from megatron_tsp.layers.mlp import swiglu_mlp
from megatron_tsp.layers.norm import rms_norm
from megatron_tsp.layers.rotary import apply_rotary, rotary_cos_sin


def _reduce(partial: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """In the activations' dtype, as Megatron TP reduces."""
    return comm.all_reduce_sum(partial.to(dtype), kind)


def _attention(attention, x, cos, sin, cache, start: int):
    """x [s, 1, h] at positions start.. -> [s, 1, h]; their k/v [1, Gr, s, hd] cached."""
    shape, s = attention.shape, x.shape[0]
    hpg, hd = shape.heads_per_group, shape.head_dim
    qkv = (x @ attention.linear_qkv.weight.t()).view(s, 1, -1, hpg + 2, hd)
    groups = qkv.shape[2]
    q = rms_norm(qkv[:, :, :, :hpg].reshape(s, 1, groups * hpg, hd), attention.q_layernorm.weight,
                 shape.eps)
    q = apply_rotary(q, cos, sin)
    k = apply_rotary(rms_norm(qkv[:, :, :, hpg], attention.k_layernorm.weight, shape.eps),
                     cos, sin)
    cache[0, :, :, start:start + s] = k.permute(1, 2, 0, 3)
    cache[1, :, :, start:start + s] = qkv[:, :, :, hpg + 1].permute(1, 2, 0, 3)
    keys, values = cache[0, :, :, :start + s], cache[1, :, :, :start + s]
    out = F.scaled_dot_product_attention(q.permute(1, 2, 0, 3), keys, values,
                                         is_causal=s > 1, enable_gqa=True)  # [1, hr, s, hd]
    out = out.permute(2, 0, 1, 3).reshape(s, 1, -1)
    return _reduce(out @ attention.linear_proj.weight.t(), "tp_attn_out", x.dtype)


def _forward(model, ids: torch.Tensor, start: int, caches) -> torch.Tensor:
    """ids [s] at positions start.. -> the last token's logits [1, V]."""
    cfg = model.qwen3_config
    positions = torch.arange(start, start + ids.shape[0], device=ids.device).unsqueeze(0)
    cos, sin = rotary_cos_sin(positions, cfg.kv_channels, cfg.rotary_base)
    x = embed(model, ids).unsqueeze(1)  # [s, 1, h]
    for layer, cache in zip(model.decoder.layers, caches):
        x = x + _attention(layer.self_attention, layer.input_layernorm(x), cos, sin, cache,
                           start)
        mlp = layer.mlp
        x = x + _reduce(swiglu_mlp(layer.pre_mlp_layernorm(x), mlp.linear_fc1.weight,
                                   mlp.linear_fc2.weight), "tp_mlp_out", x.dtype)
    return output_logits(model, model.decoder.final_layernorm(x[-1]))


def _bytes() -> int:
    return sum(v["sent"] + v["received"] for v in comm.transfer_counters().values())


@torch.no_grad()
def tp_generate(model, prompt, new_tokens: int) -> dict:
    """Greedy generation; what benchmarks/compare_decode.py reports of it."""
    cfg, D = model.qwen3_config, ps.get_tsp_world_size()
    assert cfg.num_query_groups % D == 0, "TP decode needs kv groups a multiple of D"
    weight = model.output_weight()
    capacity = len(prompt) + new_tokens - 1
    caches = [torch.empty((2, 1, cfg.num_query_groups // D, capacity, cfg.kv_channels),
                          dtype=weight.dtype, device=weight.device) for _ in range(cfg.num_layers)]
    comm.reset_transfer_counters()
    start = time.perf_counter()
    token = _forward(model, torch.tensor(prompt, device=weight.device), 0, caches).argmax(-1)
    tokens = [int(token)]
    first, prefill_bytes = time.perf_counter(), _bytes()
    while len(tokens) < new_tokens:
        token = _forward(model, token, len(prompt) + len(tokens) - 1, caches).argmax(-1)
        tokens.append(int(token))
    end = time.perf_counter()
    steps = len(tokens) - 1
    return {"tokens": tokens, "time_to_first_token_s": first - start,
            "decode_tokens_per_s": steps / (end - first),
            "cache_bytes": sum(c.numel() * c.element_size() for c in caches),
            "prefill_bytes": prefill_bytes,
            "bytes_per_generated_token": (_bytes() - prefill_bytes) / steps}
