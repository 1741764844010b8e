"""The planner's communication model: per-rank bytes of one training step, by transfer kind.

Kinds and payload convention are those of the transfer counters (megatron_tsp.comm; Megatron's
own collectives counted the same way by benchmarks/mcore_counters.py), so for tsp, tp, tp-sp and
cp these formulas equal what the benchmark counts, byte for byte (tests/test_planner.py):

    all-gather, n bytes per rank     sent n, received n (D-1)
    reduce-scatter, n bytes out      sent and received n (D-1)
    broadcast of n from its owner    owner sent n, every other rank received n
    reduce of n onto its owner       every other rank sent n, owner received n (D-1)
    ring all-reduce of n             sent and received 2 n (D-1) / D (integer division)

Legend: S sequence length, b micro-batch, h hidden, nh/G query/kv heads, hd head dim, F FFN
size, L layers, Vp padded vocabulary, e bytes per activation/weight element (4 fp32, 2 bf16);
gradients, travelling accumulators and loss statistics are fp32 (4 bytes) whatever e is.
"""

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

from megatron_tsp.layers.recompute import MODES, Recompute, mode_recompute
from megatron_tsp.config import Qwen3Config
from megatron_tsp.transfer_kinds import (
    ATTN_KV, ATTN_WEIGHTS, CP_KV, CP_WEIGHT_GRADS, DP_GRADS, LOSS, MLP_WEIGHTS,
    REPLICATED_GRADS, SP_ALL_GATHER, SP_REDUCE_SCATTER, TP_ALL_REDUCE, VOCAB_LOSS, VOCAB_WEIGHTS,
    grad_kind)

Transfers = Dict[str, Tuple[int, int]]  # kind -> (sent, received), bytes per rank
FP32 = 4
SCHEMES = ("single", "tsp", "tp", "tp-sp", "cp", "tp-cp")
# TSP's recompute choices by name, each with its Megatron flags (layers/recompute.py)
RECOMPUTE = {mode: mode_recompute(mode) for mode in MODES}


@dataclass(frozen=True)
class Layout:
    """How one replica is spread: tp = weight shards (the TSP size for tsp), cp = sequence
    shards (cp, tp-cp), dp = data-parallel replicas."""

    scheme: str
    tp: int = 1
    cp: int = 1
    dp: int = 1
    recompute: str = "none"
    """What backward recomputes: for tsp one of RECOMPUTE (layers/recompute.py), or with `layers`
    the name of the flags that chose them; for Megatron's layouts "none" or "full" (Megatron's
    full recompute, one layer per checkpoint)."""
    layers: Tuple[Recompute, ...] = ()
    """tsp: each layer's choice where Megatron's flags make one that is not a RECOMPUTE mode for
    every layer (layer_recomputes of --recompute-method block, --recompute-modules mlp, ...);
    empty: RECOMPUTE[recompute] for every layer."""

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; choose from {SCHEMES}")
        if self.layers and self.scheme != "tsp":
            raise ValueError(f"per-layer recompute choices are TSP's, not {self.scheme}'s")
        modes = tuple(RECOMPUTE) if self.scheme == "tsp" else ("none", "full")
        if self.recompute not in modes and not self.layers:
            raise ValueError(f"recompute {self.recompute!r} is not one of {modes} for "
                             f"{self.scheme}")

    def layer_recomputes(self, num_layers: int) -> Tuple[Recompute, ...]:
        """TSP's choice for each of the model's `num_layers` layers."""
        if not self.layers:
            return (RECOMPUTE[self.recompute],) * num_layers
        if len(self.layers) != num_layers:
            raise ValueError(f"{self.name}: {len(self.layers)} per-layer recompute choices for "
                             f"a model of {num_layers} layers")
        return self.layers

    @property
    def group_size(self) -> int:
        """Ranks holding one replica of the model."""
        return self.tp * self.cp

    @property
    def name(self) -> str:
        mode = "" if self.recompute == "none" else f"+{self.recompute}"
        if self.scheme == "tp-cp":
            return f"tp{self.tp}xcp{self.cp}{mode}" + (f"xdp{self.dp}" if self.dp > 1 else "")
        size = {"single": "", "cp": str(self.cp)}.get(self.scheme, str(self.tp))
        return f"{self.scheme}{size}{mode}" + (f"xdp{self.dp}" if self.dp > 1 else "")


def attention_weights(cfg: Qwen3Config) -> int:
    """W_a: elements of linear_qkv [(nh + 2G) hd, h] and linear_proj [h, nh hd] of a layer."""
    nh, G, hd, h = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels, cfg.hidden_size
    return (nh + 2 * G) * hd * h + h * nh * hd


def mlp_weights(cfg: Qwen3Config) -> int:
    """W_m: elements of linear_fc1 [2F, h] and linear_fc2 [h, F] of a layer."""
    return 3 * cfg.ffn_hidden_size * cfg.hidden_size


def replicated_params(cfg: Qwen3Config) -> int:
    """Norm weights: input and pre-MLP norms (h) and q/k norms (hd) per layer, final norm (h)."""
    return cfg.num_layers * (2 * cfg.hidden_size + 2 * cfg.kv_channels) + cfg.hidden_size


def vocab_rows(cfg: Qwen3Config, layout: Layout) -> int:
    """Rows of each vocabulary table: Megatron's padding for its TP size; the benchmark's
    context-parallel model keeps the real vocabulary."""
    return cfg.vocab_size if layout.scheme == "cp" else cfg.padded_vocab_size(layout.tp)


def params_per_rank(cfg: Qwen3Config, layout: Layout) -> int:
    """Parameters a rank holds: sharded weights / tp, replicated norms whole."""
    tables = 1 if cfg.tie_word_embeddings else 2
    sharded = cfg.num_layers * (attention_weights(cfg) + mlp_weights(cfg)) \
        + tables * vocab_rows(cfg, layout) * cfg.hidden_size
    return sharded // layout.tp + replicated_params(cfg)


def ring_all_reduce(nbytes: int, size: int) -> int:
    """Bytes sent (and received) per rank by a ring all-reduce of `nbytes`."""
    return 2 * nbytes * (size - 1) // size


def _add(out: Transfers, kind: str, sent: int, received: int) -> None:
    if sent or received:
        old = out.get(kind, (0, 0))
        out[kind] = (old[0] + sent, old[1] + received)


def tsp_transfers(cfg: Qwen3Config, S: int, b: int, D: int, e: int,
                  layers: Sequence[Recompute] = ()) -> Transfers:
    """TSP: weights travel (attention broadcast, MLP and vocabulary rings), plus the kv heads of
    the local tokens; forward and backward each move every shard once (docs/design.md).
    `layers`: each layer's recompute choice (empty: none recomputes)."""
    L, h, out = cfg.num_layers, cfg.hidden_size, {}
    if D == 1:
        return out
    wa, wm, vp = attention_weights(cfg) // D, mlp_weights(cfg) // D, cfg.padded_vocab_size(D)
    kv = (S // D) * b * 2 * cfg.num_query_groups * cfg.kv_channels * e  # local k, v of a layer
    _add(out, ATTN_WEIGHTS, 2 * L * e * wa, 2 * L * e * wa * (D - 1))
    _add(out, grad_kind(ATTN_WEIGHTS), L * FP32 * wa * (D - 1), L * FP32 * wa * (D - 1))
    # gathered again in backward when the core is recomputed
    gathers = L + sum(1 for r in layers if r.core_attn or r.qkv)
    _add(out, ATTN_KV, gathers * kv, gathers * kv * (D - 1))
    _add(out, grad_kind(ATTN_KV), L * kv * (D - 1), L * kv * (D - 1))
    _add(out, MLP_WEIGHTS, 2 * L * e * wm * (D - 1), 2 * L * e * wm * (D - 1))
    _add(out, grad_kind(MLP_WEIGHTS), L * FP32 * wm * D, L * FP32 * wm * D)  # D hops of the acc.
    # the table's shards go round for the embedding's lookup and, forward and backward, for
    # the output layer; the embedding's backward sends only its gradient accumulators
    table = vp // D * h
    _add(out, VOCAB_WEIGHTS, 3 * e * table * (D - 1), 3 * e * table * (D - 1))
    _add(out, grad_kind(VOCAB_WEIGHTS), 2 * FP32 * table * D, 2 * FP32 * table * D)
    _add(out, LOSS, ring_all_reduce(2 * FP32, D), ring_all_reduce(2 * FP32, D))
    norms = ring_all_reduce(FP32 * replicated_params(cfg), D)
    _add(out, REPLICATED_GRADS, norms, norms)
    return out


def tp_transfers(cfg: Qwen3Config, S: int, b: int, D: int, e: int) -> Transfers:
    """Megatron TP: [S, b, h] all-reduced after the embedding and each row-parallel layer
    (2L + 1 forward) and for the input gradient of each column-parallel layer (2L + 1 backward);
    three [S, b] fp32 all-reduces in the vocab-parallel cross entropy; q/k norm gradients summed
    (their gradients are partial over heads)."""
    out = {}
    if D == 1:
        return out
    act = ring_all_reduce(S * b * cfg.hidden_size * e, D)
    _add(out, TP_ALL_REDUCE, (4 * cfg.num_layers + 2) * act, (4 * cfg.num_layers + 2) * act)
    loss = 3 * ring_all_reduce(S * b * FP32, D)
    _add(out, VOCAB_LOSS, loss, loss)
    qk = ring_all_reduce(FP32 * 2 * cfg.num_layers * cfg.kv_channels, D)
    _add(out, REPLICATED_GRADS, qk, qk)
    return out


def tp_sp_transfers(cfg: Qwen3Config, S: int, b: int, D: int, e: int) -> Transfers:
    """Megatron TP + SP: per layer the inputs of the 2 column-parallel layers are all-gathered
    forward and again backward (for the weight gradient), the output gradients of the 2
    row-parallel layers all-gathered backward; the output layer's input likewise and the
    embedding's gradient: 6L + 3 all-gathers of [S/D, b, h]. Reduce-scatters of [S, b, h]:
    embedding and row-parallel outputs forward, column-parallel input gradients backward,
    4L + 2. Every norm's gradient is summed (tokens are sharded)."""
    out = {}
    if D == 1:
        return out
    L, shard = cfg.num_layers, S // D * b * cfg.hidden_size * e
    _add(out, SP_ALL_GATHER, (6 * L + 3) * shard, (6 * L + 3) * shard * (D - 1))
    _add(out, SP_REDUCE_SCATTER, (4 * L + 2) * shard * (D - 1), (4 * L + 2) * shard * (D - 1))
    loss = 3 * ring_all_reduce(S * b * FP32, D)
    _add(out, VOCAB_LOSS, loss, loss)
    norms = ring_all_reduce(FP32 * replicated_params(cfg), D)
    _add(out, REPLICATED_GRADS, norms, norms)
    return out


def cp_transfers(cfg: Qwen3Config, S: int, b: int, D: int, e: int) -> Transfers:
    """Context parallel with replicated weights: the kv heads of the local tokens all-gathered
    per layer (no recompute) and their gradient reduce-scattered back; every weight gradient
    summed over the group (one flat buffer)."""
    out = {}
    if D == 1:
        return out
    L, kv = cfg.num_layers, (S // D) * b * 2 * cfg.num_query_groups * cfg.kv_channels * e
    _add(out, CP_KV, L * kv, L * kv * (D - 1))
    _add(out, grad_kind(CP_KV), L * kv * (D - 1), L * kv * (D - 1))
    grads = ring_all_reduce(FP32 * params_per_rank(cfg, Layout("cp", cp=D)), D)
    _add(out, CP_WEIGHT_GRADS, grads, grads)
    _add(out, LOSS, ring_all_reduce(2 * FP32, D), ring_all_reduce(2 * FP32, D))
    return out


def tp_cp_transfers(cfg: Qwen3Config, S: int, b: int, T: int, C: int, e: int) -> Transfers:
    """Megatron TP (with SP) x CP (planner only, not benchmarked): TP + SP on the S/C local
    tokens; over CP, the local kv heads (G/T) of the S/C tokens all-gathered and their gradient
    reduce-scattered, the rank's weight gradients (1/T of the model) all-reduced."""
    out = tp_sp_transfers(cfg, S // C, b, T, e)
    if C == 1:
        return out
    kv = (S // C) * b * 2 * (cfg.num_query_groups // T) * cfg.kv_channels * e
    L = cfg.num_layers
    _add(out, CP_KV, L * kv, L * kv * (C - 1))
    _add(out, grad_kind(CP_KV), L * kv * (C - 1), L * kv * (C - 1))
    grads = ring_all_reduce(FP32 * params_per_rank(cfg, Layout("tp-cp", tp=T, cp=C)), C)
    _add(out, CP_WEIGHT_GRADS, grads, grads)
    return out


def data_parallel_transfers(cfg: Qwen3Config, layout: Layout, e: int,
                            distributed_optimizer: bool) -> Transfers:
    """Gradient sync over dp replicas (planner only): an fp32 ring all-reduce, or with the
    distributed optimizer a reduce-scatter of fp32 gradients plus an all-gather of the params."""
    dp, out = layout.dp, {}
    if dp == 1:
        return out
    P = params_per_rank(cfg, layout)
    if distributed_optimizer:
        moved = FP32 * P * (dp - 1) // dp + e * P * (dp - 1) // dp
    else:
        moved = ring_all_reduce(FP32 * P, dp)
    _add(out, DP_GRADS, moved, moved)
    return out


def transfer_bytes(layout: Layout, cfg: Qwen3Config, S: int, b: int, e: int,
                   distributed_optimizer: bool = False) -> Transfers:
    """All transfers of one step of `layout`, per rank, by kind."""
    formulas = {
        "single": lambda: {},
        "tsp": lambda: tsp_transfers(cfg, S, b, layout.tp, e,
                                     layout.layer_recomputes(cfg.num_layers)),
        "tp": lambda: tp_transfers(cfg, S, b, layout.tp, e),
        "tp-sp": lambda: tp_sp_transfers(cfg, S, b, layout.tp, e),
        "cp": lambda: cp_transfers(cfg, S, b, layout.cp, e),
        "tp-cp": lambda: tp_cp_transfers(cfg, S, b, layout.tp, layout.cp, e),
    }
    out = formulas[layout.scheme]()
    for kind, (sent, received) in data_parallel_transfers(cfg, layout, e,
                                                           distributed_optimizer).items():
        _add(out, kind, sent, received)
    return out
