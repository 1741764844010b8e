"""One decode step on the TSP weight shards used as tensor-parallel shards: no weight moves.

Legend: b batch, h hidden, nh/G query/kv heads, hpg = nh/G, hd head dim, n_r tokens in this
rank's cache slice, Vp padded vocabulary. Rank r's shards are Megatron's tensor-parallel shards
r, so each product below is a column- or row-parallel GEMM on r's own shard:

    embedding   x = all-reduce(own vocabulary rows' embeddings)                   [b, h]
    attention   qkv = all-gather(x @ Wqkv_r^T)                                     one token
                every rank: all nh heads over its cache slice -> out_r, lse_r      [b, nh, hd]
                all-to-all: rank j gets every rank's (out, lse) of j's heads, and merges
                them by log-sum-exp                                 (flash-decoding / Helix)
                y = all-reduce(out[heads of r] @ Wproj_r^T)
    MLP         y = all-reduce(swiglu(x @ Wfc1_r^T) @ Wfc2_r^T)
    vocabulary  logits = all-gather(x @ Wout_r^T)                                  [b, Vp]

The qkv of the new token is gathered whole because every rank's slice holds every kv head, so
every rank needs every head's query (and the rank caching the token, all its kv heads). Four
exchanges per layer, none of which grows with the context. The reductions are fp32, as
training's partial sums; the logits travel in the weights' dtype, in which they were computed.
Nothing here waits on the host: the cache lengths and the placement are host integers.
"""

import torch

from megatron_tsp import comm
from megatron_tsp import parallel_state as ps
from megatron_tsp.inference.kv_cache import KVCache
from megatron_tsp.layers.mlp import swiglu_mlp
from megatron_tsp.layers.norm import rms_norm
from megatron_tsp.layers.rotary import apply_rotary, rotary_cos_sin
from megatron_tsp.layers.vocab import masked_logits, rows_in_shard
from megatron_tsp.transfer_kinds import (DECODE_ATTN_MERGE, DECODE_ATTN_OUT, DECODE_EMBEDDING,
                                         DECODE_LOGITS, DECODE_MLP_OUT, DECODE_QKV)


def _gather_last(local: torch.Tensor, kind: str) -> torch.Tensor:
    """[..., m] on each rank -> [..., D·m] in rank order on every rank."""
    if ps.get_tsp_world_size() == 1:
        return local
    parts = comm.gather_along_sequence(local.unsqueeze(0), kind)  # [D, ..., m]
    return parts.movedim(0, -2).flatten(-2)


def _sum(partial: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    return comm.all_reduce_sum(partial.float(), kind).to(dtype)


def embed(model, tokens: torch.Tensor) -> torch.Tensor:
    """tokens [b] -> embeddings [b, h]: each id's row lives in one rank's shard."""
    table = model.embedding.word_embeddings.weight
    hit, row = rows_in_shard(tokens, ps.get_tsp_rank(), table.shape[0])
    return comm.all_reduce_sum(torch.where(hit.unsqueeze(-1), table[row], 0), DECODE_EMBEDDING)


def logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Final-normed hidden [b, h] -> logits [b, V] (fp32), padded rows dropped."""
    vocab, table = model.qwen3_config.vocab_size, model.output_weight()
    local = masked_logits(hidden, table, ps.get_tsp_rank(), vocab).to(table.dtype)
    return _gather_last(local, DECODE_LOGITS)[:, :vocab].float()


def _partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """q [b, G, hpg, hd] over k/v [b, G, n_r, hd] -> out [b, G, hpg, hd], lse [b, G, hpg]
    (fp32). An empty slice gives lse -inf, which the merge weighs zero."""
    if k.shape[2] == 0:
        return (torch.zeros(q.shape, dtype=torch.float32, device=q.device),
                torch.full(q.shape[:-1], float("-inf"), device=q.device))
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    lse = scores.logsumexp(-1)
    probs = (scores - lse.unsqueeze(-1)).exp()
    return (probs.to(v.dtype) @ v).float(), lse


def _merge(out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """This rank's out [b, nh, hd] and lse [b, nh] over its slice -> the attention of this
    rank's nh/D heads over every rank's slice [b, nh/D, hd]."""
    D, b = ps.get_tsp_world_size(), out.shape[0]
    packed = torch.cat([out, lse.unsqueeze(-1)], -1)  # [b, nh, hd + 1]
    by_rank = comm.all_to_all(packed.view(b, D, -1, packed.shape[-1]).transpose(0, 1),
                              DECODE_ATTN_MERGE)  # [D sources, b, nh/D, hd + 1]
    outs, lses = by_rank[..., :-1], by_rank[..., -1:]
    return (outs * (lses - lses.logsumexp(0, keepdim=True)).exp()).sum(0)


def _attention(attention, x, cache: KVCache, layer: int, cos, sin):
    """x [1, b, h] (normed) -> attention output [1, b, h]; the token's k/v go to the cache."""
    shape, b = attention.shape, x.shape[1]
    G, hd, hpg = shape.groups, shape.head_dim, shape.heads_per_group
    qkv = _gather_last(x @ attention.linear_qkv.weight.t(), DECODE_QKV)
    qkv = qkv.view(1, b, G, hpg + 2, hd)
    q = rms_norm(qkv[:, :, :, :hpg].reshape(1, b, G * hpg, hd), attention.q_layernorm.weight,
                 shape.eps)
    q = apply_rotary(q, cos, sin)
    k = apply_rotary(rms_norm(qkv[:, :, :, hpg], attention.k_layernorm.weight, shape.eps),
                     cos, sin)
    cache.append(layer, k[0], qkv[0, :, :, hpg + 1])
    out, lse = _partial_attention(q[0].view(b, G, hpg, hd), *cache.keys_values(layer))
    mine = _merge(out.flatten(1, 2), lse.flatten(1, 2)).flatten(1)  # [b, nh·hd / D]
    w_proj = attention.linear_proj.weight  # [h, nh·hd / D]: the columns of this rank's heads
    return _sum(mine.to(x.dtype) @ w_proj.t(), DECODE_ATTN_OUT, x.dtype).unsqueeze(0)


@torch.no_grad()
def decode_step(model, tokens: torch.Tensor, position: int, cache: KVCache) -> torch.Tensor:
    """tokens [b] at `position` (the same on every rank) -> next-token logits [b, V] (fp32);
    the tokens' keys/values are cached."""
    cfg = model.qwen3_config
    positions = torch.full((tokens.shape[0], 1), position, device=tokens.device)
    # [1, b, 1, hd]
    cos, sin = rotary_cos_sin(positions, cfg.kv_channels, cfg.rotary_base, cfg.yarn)
    x = embed(model, tokens).unsqueeze(0)  # [1, b, h]
    for i, layer in enumerate(model.decoder.layers):
        x = x + _attention(layer.self_attention, layer.input_layernorm(x), cache, i, cos, sin)
        mlp = layer.mlp
        partial = swiglu_mlp(layer.pre_mlp_layernorm(x), mlp.linear_fc1.weight,
                             mlp.linear_fc2.weight)
        x = x + _sum(partial, DECODE_MLP_OUT, x.dtype)
    cache.advance()
    return logits(model, model.decoder.final_layernorm(x)[0])
