"""Prefill: the training forward over the zigzag-sharded prompt, filling the KV cache.

Legend: n prompt tokens, S = n padded to a multiple of 2D, s = S/D local tokens, b batch, h
hidden, G kv heads, hd head dim, c = S/2D chunk length.

The layers run as in training (attention weight shards broadcast, K/V gathered per head group,
MLP and vocabulary shards in a ring). A forward pre-hook on each attention layer catches its
input, from which the keys/values of the rank's own tokens are computed for every kv head:
x_local @ W_kv^T, k-norm, RoPE at the global positions. A rank's qkv shard holds only some
groups' rows (with G < D, part of one group's), so first each owner broadcasts the k/v rows of
its shard (never its q rows): 2·G·hd·h weights per layer, and the attention layer's code is left
as it is. The prompt is padded on the right to S; causal attention keeps the real tokens exact,
and only real tokens reach the cache.
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F

from megatron_tsp import comm
from megatron_tsp import parallel_state as ps
from megatron_tsp.inference.kv_cache import KVCache
from megatron_tsp.layers.norm import rms_norm
from megatron_tsp.layers.rotary import apply_rotary, rotary_cos_sin
from megatron_tsp.layout import local_chunks, padded_length, scatter_to_local
from megatron_tsp.transfer_kinds import PREFILL_HIDDEN, PREFILL_KV_WEIGHTS


def kv_row_runs(config, tsp_size: int) -> List[List[Tuple[int, int]]]:
    """For each owner, the runs [start, end) of its linear_qkv shard's rows that are k or v rows
    (the full weight is Megatron's per-group interleaved [q heads of the group; k; v] layout,
    split by rows). Host integers: the rows are taken by slicing, so no index tensor is built
    or copied to the device."""
    hpg, hd = config.num_attention_heads // config.num_query_groups, config.kv_channels
    per_group = (hpg + 2) * hd
    rows = config.num_query_groups * per_group // tsp_size
    runs = []
    for owner in range(tsp_size):
        first, end = owner * rows, (owner + 1) * rows
        group_runs = ((max(g * per_group + hpg * hd, first), min((g + 1) * per_group, end))
                      for g in range(config.num_query_groups))
        runs.append([(a - first, b - first) for a, b in group_runs if a < b])
    return runs


def _own_kv_rows(w_qkv: torch.Tensor, runs: List[Tuple[int, int]]) -> torch.Tensor:
    return torch.cat([w_qkv[a:b] for a, b in runs]) if runs else w_qkv[:0]


def _kv_weights(w_qkv: torch.Tensor, runs: List[List[Tuple[int, int]]]) -> torch.Tensor:
    """Every owner's k/v rows on every rank: [2·G·hd, h] in the full layout's order."""
    D, p = len(runs), ps.get_tsp_rank()
    if D == 1:
        return _own_kv_rows(w_qkv, runs[0])
    blocks, work = [], []
    for owner, owner_runs in enumerate(runs):
        if owner == p:
            block = _own_kv_rows(w_qkv, owner_runs)
        else:
            block = w_qkv.new_empty((sum(b - a for a, b in owner_runs), w_qkv.shape[1]))
        work.append(comm.broadcast_from(block, owner, PREFILL_KV_WEIGHTS))
        blocks.append(block)
    comm.wait_all(work, PREFILL_KV_WEIGHTS)
    return torch.cat(blocks)


def _real_tokens(local: torch.Tensor, tokens: int) -> torch.Tensor:
    """The local tokens (dim 0, zigzag order) that are not padding: each chunk's first ones."""
    D, p = ps.get_tsp_world_size(), ps.get_tsp_rank()
    c = local.shape[0] // 2
    kept = [local[i * c:i * c + min(max(tokens - k * c, 0), c)]
            for i, k in enumerate(local_chunks(p, D))]
    return torch.cat(kept)


def _last_token_owner(tokens: int, tsp_size: int):
    """(rank, local index) of the last real prompt token."""
    c = padded_length(tokens, tsp_size) // (2 * tsp_size)
    chunk = (tokens - 1) // c
    if chunk < tsp_size:
        return chunk, tokens - 1 - chunk * c
    return 2 * tsp_size - 1 - chunk, c + tokens - 1 - chunk * c


@torch.no_grad()
def prefill(model, prompt: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """prompt [b, n] (the same on every rank) -> the final-normed hidden state of the last
    prompt token [b, h] on every rank; the cache holds the prompt's keys/values."""
    cfg, D = model.qwen3_config, ps.get_tsp_world_size()
    b, n = prompt.shape
    S = padded_length(n, D)
    ids = F.pad(prompt, (0, S - n))  # any id will do: no real token attends to the padding
    positions = torch.arange(S, device=prompt.device).expand(b, S)
    runs = kv_row_runs(cfg, D)
    layer_of = {layer.self_attention: i for i, layer in enumerate(model.decoder.layers)}

    def cache_kv(attention, inputs):
        x, cos, sin = inputs[:3]  # [s, b, h], [s, b, 1, hd]; then the documents (None)
        w_kv = _kv_weights(attention.linear_qkv.weight, runs)
        kv = (x @ w_kv.t()).view(*x.shape[:2], cfg.num_query_groups, 2, cfg.kv_channels)
        k = apply_rotary(rms_norm(kv[:, :, :, 0], attention.k_layernorm.weight,
                                  cfg.norm_epsilon), cos, sin)
        k, v = (_real_tokens(t, n).permute(1, 2, 0, 3) for t in (k, kv[:, :, :, 1]))
        cache.fill_prompt(layer_of[attention], k, v)

    hooks = [attention.register_forward_pre_hook(cache_kv) for attention in layer_of]
    try:
        ids_local, positions_local = scatter_to_local(ids, 1), scatter_to_local(positions, 1)
        cos, sin = rotary_cos_sin(positions_local, cfg.kv_channels, cfg.rotary_base, cfg.yarn)
        # one prompt: one document, no packed offsets; hidden [s, b, h], final-normed
        hidden = model.decoder(model.embedding(ids_local), cos, sin, None)
    finally:
        for hook in hooks:
            hook.remove()
    owner, index = _last_token_owner(n, D)
    last = hidden[index].contiguous()
    if D > 1:
        comm.wait_all([comm.broadcast_from(last, owner, PREFILL_HIDDEN)], PREFILL_HIDDEN)
    return last
