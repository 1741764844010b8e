"""The planner's model of generation (batch 1): the KV cache per rank, and the bytes a rank moves
per prefill and per generated token, for TSP (megatron_tsp/inference) and for tensor-parallel
decode of the same model (Megatron TP: kv heads split over the ranks, one all-reduce after
attention and after the MLP, logits gathered).

Bytes are sent + received per rank, as the transfer counters count them (megatron_tsp.comm);
where the ranks differ (each owner's share of the k/v weight rows, the rank holding the last
prompt token) the figure is their mean, so it times D equals the group's total exactly.
Legend: n prompt tokens, S = n padded to a multiple of 2D, h hidden, nh/G query/kv heads, hd
head dim, L layers, Vp padded vocabulary, e bytes per weight/activation element; the attention
merge and the output-projection and MLP reductions are fp32 (4 bytes).
"""

from megatron_tsp.config import Qwen3Config
from megatron_tsp.layout import cached_tokens, padded_length
from megatron_tsp.planner.transfers import FP32, attention_weights, mlp_weights, ring_all_reduce


def bytes_per_cached_token(config: Qwen3Config, element_bytes: int) -> int:
    """Keys and values of one token: every layer, every kv head."""
    return config.num_layers * 2 * config.num_query_groups * config.kv_channels * element_bytes


def _kv_rows(cfg: Qwen3Config) -> int:
    return 2 * cfg.num_query_groups * cfg.kv_channels


def tsp_prefill_bytes(cfg: Qwen3Config, n: int, D: int, e: int) -> float:
    """The training forward (attention weights broadcast, K/V gathered, MLP and embedding
    rings; no output-layer ring), each owner's k/v weight rows broadcast, the last token's
    hidden state broadcast and its logits gathered."""
    if D == 1:
        return 0
    S, h, Vp = padded_length(n, D), cfg.hidden_size, cfg.padded_vocab_size(D)
    per_layer = (e * attention_weights(cfg) + e * S * _kv_rows(cfg)
                 + 2 * e * mlp_weights(cfg) * (D - 1) // D + e * _kv_rows(cfg) * h)
    return cfg.num_layers * per_layer + 2 * e * Vp * h * (D - 1) // D + e * h + e * Vp


def tsp_decode_bytes(cfg: Qwen3Config, D: int, e: int) -> int:
    """Per generated token: embedding all-reduce; per layer the token's qkv gathered, the
    partial attentions and log-sum-exps exchanged all-to-all by head, two all-reduces; the
    logits gathered."""
    if D == 1:
        return 0
    h, nh, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.kv_channels
    per_layer = (e * (nh + 2 * cfg.num_query_groups) * hd
                 + 2 * (FP32 * nh * (hd + 1) * (D - 1) // D)
                 + 2 * 2 * ring_all_reduce(FP32 * h, D))
    return (2 * ring_all_reduce(e * h, D) + cfg.num_layers * per_layer
            + e * cfg.padded_vocab_size(D))


def tp_prefill_bytes(cfg: Qwen3Config, n: int, D: int, e: int) -> int:
    """Megatron TP without sequence parallelism: embedding and two all-reduces per layer of the
    [n, h] activations; the last token's logits gathered."""
    if D == 1:
        return 0
    reduce = 2 * ring_all_reduce(e * n * cfg.hidden_size, D)
    return (1 + 2 * cfg.num_layers) * reduce + e * cfg.padded_vocab_size(D)


def tp_decode_bytes(cfg: Qwen3Config, D: int, e: int) -> int:
    """Megatron TP per generated token: the same all-reduces on one token, logits gathered."""
    return tp_prefill_bytes(cfg, 1, D, e)


def tsp_cache_bytes(cfg: Qwen3Config, n: int, new_tokens: int, D: int, e: int) -> int:
    """The fullest rank's cache after an n-token prompt and new_tokens generated ones (the
    last is never cached): every kv head of ~1/D of the tokens."""
    return max(cached_tokens(n, new_tokens - 1, D)) * bytes_per_cached_token(cfg, e)


def tp_cache_bytes(cfg: Qwen3Config, tokens: int, D: int, e: int) -> int:
    """TP splits the kv heads: with fewer kv groups than ranks each rank keeps a whole one."""
    groups = max(cfg.num_query_groups // D, 1)
    return tokens * cfg.num_layers * 2 * groups * cfg.kv_channels * e


def generation_line(cfg: Qwen3Config, n: int, D: int, e: int) -> str:
    """One line for the planner's output: TSP's generation of an n-token prompt against TP's."""
    mib = 2 ** 20
    return (f"generation at D = {D}, {n}-token prompt: KV cache per rank "
            f"{tsp_cache_bytes(cfg, n, 1, D, e) / mib:.1f} MiB (TP decode "
            f"{tp_cache_bytes(cfg, n, D, e) / mib:.1f}); bytes per rank per prefill "
            f"{tsp_prefill_bytes(cfg, n, D, e) / mib:.1f} MiB "
            f"(TP {tp_prefill_bytes(cfg, n, D, e) / mib:.1f}), "
            f"per generated token {tsp_decode_bytes(cfg, D, e) / 1024:.1f} KiB "
            f"(TP {tp_decode_bytes(cfg, D, e) / 1024:.1f})")
