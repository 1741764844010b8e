"""The planner's memory model: bytes per rank of model state, kept activations and transients.

Activations are counted tensor by tensor from what each implementation keeps for backward (the
saved-tensor inventory of one layer, per token): megatron-core GPTModel with the local spec and a
fused attention core (tp, tp-sp, single), megatron_tsp's TSP model (each norm's input, output and
1/rms, and what its recompute mode keeps of attention and MLP), the benchmark's context-parallel model
(benchmarks/cp_model.py: no recompute). Peak = model state + kept activations + transient, the
transient being the most any of a few moments adds on top of the kept activations (the start of
backward, an attention step recomputed, the end of backward with the vocabulary gradients).
Calibrated on CPU fp32 runs, where the measured peaks are within 5%.

Attention builds nothing of size S x S on any device: a flash kernel on GPU, and on CPU the
mask-free zigzag chunks of layers/chunk_attention.py (TSP and the CP benchmark model alike).

Legend: s tokens on the rank, b micro-batch, h hidden, nh/G query/kv heads, hd head dim, F FFN,
L layers, V vocabulary (Vp padded), e bytes per activation element, t tensor-parallel size.
"""

from dataclasses import dataclass
from typing import Sequence

from megatron_tsp.layers.recompute import NONE, Recompute
from megatron_tsp.config import Qwen3Config
from megatron_tsp.planner.transfers import FP32, Layout, params_per_rank, vocab_rows

INT64 = 8
# gloo (the CPU runs' backend) stages an all-gather or reduce-scatter through one buffer of the
# full size; NCCL/RCCL work in place
GLOO_COLLECTIVE_COPIES = 1


@dataclass
class MemoryEstimate:
    """Bytes per rank; `total` is the predicted peak."""

    params: int
    grads: int
    optimizer: int
    activations: int
    transient: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations + self.transient


def model_state_bytes(P: int, e: int, dp: int, distributed_optimizer: bool):
    """(params, grads, optimizer) for P params: e-byte params, fp32 gradients, Adam's two fp32
    moments plus an fp32 master copy when params are not fp32; the distributed optimizer shards
    the optimizer state over dp."""
    optimizer = P * (2 * FP32 + (FP32 if e < FP32 else 0))
    if distributed_optimizer:
        optimizer = -(-optimizer // dp)
    return P * e, P * FP32, optimizer


def _norm_bytes(tokens: int, h: int, e: int) -> int:
    """Megatron's RMSNorm (torch ops under autograd) keeps its input upcast to fp32, the
    normalised input cast back to e, its output (kept by the next layer) and an fp32 1/rms per
    token."""
    return tokens * (h * (FP32 + 2 * e) + FP32)


def _tsp_norm_bytes(tokens: int, h: int, e: int) -> int:
    """megatron_tsp's RMSNorm (layers/norm.py) keeps its input, its output (kept by the next
    layer) and an fp32 1/rms per token; the normalised input is recomputed in backward."""
    return tokens * (2 * h * e + FP32)


def _q_copies(heads_per_group: int, groups_per_rank: int) -> int:
    """q is copied out of the grouped qkv output (an extra [tokens, heads x hd] tensor) unless
    the rank has one kv group or each group has one query head (then the split is a view)."""
    return 1 if heads_per_group > 1 and groups_per_rank > 1 else 0


def megatron_layer_bytes(cfg: Qwen3Config, S: int, b: int, t: int, sp: bool, e: int) -> int:
    """What one GPTModel layer (local spec, fused attention core) keeps: two norms on S (or S/t
    with SP) tokens; heads / t of the qkv output, q/k norm and RoPE tensors, the attention output,
    its contiguous context, the log-sum-exp and norm statistics; the per-application RoPE
    cos/sin; fc1 output, silu and gate product (F / t)."""
    h, nh, G, hd, F = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups,
                       cfg.kv_channels, cfg.ffn_hidden_size)
    norm_tokens = S * b // t if sp else S * b
    q_tensors = 3 + _q_copies(nh // G, G // t)
    heads = ((nh + 2 * G) * hd + q_tensors * nh * hd + 2 * G * hd) // t
    return (2 * _norm_bytes(norm_tokens, h, e)
            + S * b * (heads * e + 4 * hd * e + (2 * nh + G) // t * FP32 + 5 * F // t * e))


def megatron_global_bytes(cfg: Qwen3Config, S: int, b: int, t: int, sp: bool, e: int) -> int:
    """Outside the layers GPTModel keeps the final norm, the fp32 softmax of the vocab-parallel
    loss and the token, label and position ids."""
    norm_tokens = S * b // t if sp else S * b
    return (_norm_bytes(norm_tokens, cfg.hidden_size, e)
            + S * b * (cfg.padded_vocab_size(t) // t * FP32 + 3 * INT64))


def megatron_transient_bytes(cfg: Qwen3Config, S: int, b: int, t: int, sp: bool, e: int) -> int:
    """Persistent buffers: RoPE's fp32 cos/sin cache of S positions and, with SP, Megatron's
    global all-gather buffer [S, b, h]. At the start of backward: the output layer's weight
    gradient (a fresh fp32 tensor before it is accumulated) and the [S, b, h] input gradient;
    with SP also the re-gathered input and the reduce-scatter's input ((1 + 1/t) [S, b, h])."""
    act = S * b * cfg.hidden_size * e
    buffers = S * 2 * cfg.kv_channels * FP32 + (act if sp else 0)
    table = cfg.padded_vocab_size(t) // t * cfg.hidden_size * FP32
    return buffers + table + act + (act + act // t if sp else 0)


def _tsp_mlp_bytes(cfg: Qwen3Config, s: int, e: int, recompute: Recompute) -> int:
    """What a TSP MLP keeps on s local tokens: fc1's output and, with the activation kept,
    silu(gate) and the product; nothing when fc1 is recomputed."""
    if recompute.fc1:
        return 0
    return s * cfg.ffn_hidden_size * e * (2 if recompute.swiglu else 4)


def tsp_layer_bytes(cfg: Qwen3Config, S: int, b: int, D: int, e: int,
                    recompute: Recompute = NONE) -> int:
    """What one TSP layer keeps of attention and MLP (layers/attention.py, layers/mlp.py) on the
    s = S/D x b local tokens, all head-group steps and ring visits together; nothing with full
    recompute. Attention: the qkv GEMM's output; with the q/k norms kept, q's copy out of the
    grouped qkv and an fp32 1/rms per q/k head; the rotated q and, where the norms or the core
    are recomputed (not both), the local k and v; with the core kept, its output twice (per
    chunk and concatenated), an fp32 log-sum-exp per head and each step's keys/values of the
    whole sequence. MLP: `_tsp_mlp_bytes`."""
    s, nh, G, hd = S // D * b, cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
    total = 0
    if not recompute.qkv:
        keep_norms, keep_core = not recompute.norm_rope, not recompute.core_attn
        per_token = (nh + 2 * G) * hd * e
        if keep_norms:
            groups_per_step = G // min(G, D)
            per_token += _q_copies(nh // G, groups_per_step) * nh * hd * e + (nh + G) * FP32
        if keep_norms or keep_core:
            per_token += nh * hd * e + (0 if keep_norms and keep_core else 2 * G * hd * e)
        if keep_core:
            per_token += 2 * nh * hd * e + nh * FP32
            total += S * b * 2 * G * hd * e
        total += s * per_token
    return total + _tsp_mlp_bytes(cfg, s, e, recompute)


def tsp_activation_bytes(cfg: Qwen3Config, S: int, b: int, D: int, e: int,
                         layers: Sequence[Recompute]) -> int:
    """TSP keeps per layer its two norms' tensors on the S/D local tokens and what the layer's
    recompute choice in `layers` keeps (tsp_layer_bytes); globally the final norm, fp32 RoPE
    cos/sin, the loss's fp32 log-sum-exp and the local ids and labels."""
    s, h = S // D * b, cfg.hidden_size
    return ((2 * cfg.num_layers + 1) * _tsp_norm_bytes(s, h, e)
            + sum(tsp_layer_bytes(cfg, S, b, D, e, recompute) for recompute in layers)
            + s * (2 * cfg.kv_channels * FP32 + FP32 + 2 * INT64))


def tsp_transient_bytes(cfg: Qwen3Config, S: int, b: int, D: int, e: int,
                        recompute: Recompute = NONE, collective_copies: int = 0) -> int:
    """The larger of two moments.
    Output layer backward, a visiting shard (its copy and the prefetched one, the fp32 input and
    input-gradient [s, h] alive throughout), at the larger of: its logits [s, Vp/D] being made,
    the matmul's (e bytes) and, below fp32, their fp32 copy, which becomes the probabilities in
    place, with the travelling fp32 gradient accumulator; or its gradient being passed on, the
    probabilities with three fp32 accumulators (this rank's partial, the travelling and the
    incoming one). Both measured on fake GPU tensors (tests/test_fake_gpu.py) and on CPU
    (tests/test_planner.py).
    Last layer's attention backward, the core of step j, once the last layer's MLP has freed
    what it kept: in units of the step's keys/values of the whole sequence, two beside the kept
    ones (the gradient as the core's backward assembles it, and the keys/values recomputed
    where the core is: measured, tests/test_planner.py) and two reduce-scatters in flight
    (step j's, step j-1's: their rank-order input and the backend's `collective_copies` each);
    on the local tokens, step j's core output gradient and query gradient and step j-1's query
    and local key/value gradients, and where the step recomputes, also what it rebuilt
    (projections, rotated q, local k/v, core output: both steps); four fp32 [s, h] gradient
    tensors, less the last layer's pre-MLP norm and the final norm already freed."""
    s, h, hd = S // D * b, cfg.hidden_size, cfg.kv_channels
    shard = cfg.padded_vocab_size(D) // D
    copy = e if e < FP32 else 0  # an fp32 matmul's logits are their own fp32 copy
    logits_made = s * shard * (FP32 + copy) + shard * h * FP32
    gradient_passed = s * shard * FP32 + 3 * shard * h * FP32
    vocab = max(logits_made, gradient_passed) + 2 * shard * h * e + 2 * s * h * FP32
    steps = min(cfg.num_query_groups, D)
    kv_step = S * b * 2 * (cfg.num_query_groups // steps) * hd * e
    kv_copies = 2 + 2 * (1 + collective_copies)
    q_step, kv_local = s * cfg.num_attention_heads // steps * hd * e, kv_step // D
    rebuilt = recompute.qkv or recompute.norm_rope or recompute.core_attn
    local = 8 * q_step + 5 * kv_local if rebuilt else 3 * q_step + kv_local
    attention_step = (kv_copies * kv_step + local + 4 * s * h * FP32
                      - 2 * _tsp_norm_bytes(s, h, e) - _tsp_mlp_bytes(cfg, s, e, recompute))
    return max(vocab, attention_step)


def cp_layer_bytes(cfg: Qwen3Config, S: int, b: int, D: int, e: int) -> int:
    """What one context-parallel layer keeps (autograd, no recompute) on the S/D local tokens:
    as GPTModel's layer but with a 4F MLP and the output projection's input, plus the gathered
    keys and values of the whole sequence (stacked for the kernel) and the gather's int64 order
    index."""
    s, h, nh, G, hd, F = (S // D * b, cfg.hidden_size, cfg.num_attention_heads,
                          cfg.num_query_groups, cfg.kv_channels, cfg.ffn_hidden_size)
    # q: its norm's output, RoPE's rotated half and output (+ a copy); k: norm output, rotated half
    q_tensors = 3 + _q_copies(nh // G, G)
    per_token = ((nh + 2 * G) * hd + q_tensors * nh * hd + 2 * G * hd + 4 * F) * e \
        + (2 * nh + G) * FP32
    return 2 * _tsp_norm_bytes(s, h, e) + s * per_token + S * b * 2 * G * hd * e + S * INT64


def cp_global_bytes(cfg: Qwen3Config, S: int, b: int, D: int, e: int) -> int:
    """Outside the layers: the final norm, the fp32 log-softmax over the full vocabulary, fp32
    RoPE cos/sin and the local ids and labels."""
    s = S // D * b
    return (_tsp_norm_bytes(s, cfg.hidden_size, e)
            + s * (cfg.vocab_size * FP32 + 2 * cfg.kv_channels * FP32 + 2 * INT64))


def cp_transient_bytes(cfg: Qwen3Config, S: int, b: int, D: int) -> int:
    """Start of backward: two fp32 [s, V] gradients of the log-softmax."""
    return 2 * S // D * b * cfg.vocab_size * FP32


def table_gradient_bytes(cfg: Qwen3Config, rows: int) -> int:
    """End of backward, when the kept activations are gone: a tied vocabulary table's two fresh
    fp32 gradients (the output layer's, held until the embedding's arrives) and their sum; an
    untied embedding table's gradient alone."""
    return (3 if cfg.tie_word_embeddings else 1) * rows * cfg.hidden_size * FP32


def memory_bytes(layout: Layout, cfg: Qwen3Config, S: int, b: int, e: int,
                 distributed_optimizer: bool = False,
                 collective_copies: int = 0) -> MemoryEstimate:
    """Peak bytes per rank of one training step of `layout` (the rank with the most).
    `collective_copies`: the full-size copies the communication backend makes of a collective
    in flight: none on NCCL/RCCL (the default); one on gloo, the CPU runs' backend (all-gather
    and reduce-scatter stage through a buffer of the full size).

    TSP keeps what each layer's recompute choice says (tsp_layer_bytes); its transient is the
    last layer's, whose backward runs first, while every other layer's kept tensors are alive
    (Megatron's block method recomputes the first layers, which run backward once the later
    layers have freed more than a recomputed layer rebuilds). Megatron's full recompute of the
    other layouts (one layer per checkpoint; planner only, not benchmarked) keeps each layer's
    input, and the layer being recomputed holds its full activations for a moment (added to
    the transient)."""
    params, grads, optimizer = model_state_bytes(params_per_rank(cfg, layout), e, layout.dp,
                                                 distributed_optimizer)
    L, t, C, h = cfg.num_layers, layout.tp, layout.cp, cfg.hidden_size
    rows = vocab_rows(cfg, layout) // t
    if layout.scheme == "tsp":
        layers = layout.layer_recomputes(L)
        act = tsp_activation_bytes(cfg, S, b, t, e, layers)
        transient = max(tsp_transient_bytes(cfg, S, b, t, e, layers[-1], collective_copies),
                        table_gradient_bytes(cfg, rows) - act)
        return MemoryEstimate(params, grads, optimizer, act, transient)
    if layout.scheme == "cp":
        layer = cp_layer_bytes(cfg, S, b, C, e)
        glob = cp_global_bytes(cfg, S, b, C, e)
        transient = cp_transient_bytes(cfg, S, b, C)
        layer_input = S // C * b * h * e
    else:  # single, tp, tp-sp; tp-cp is Megatron on the S / cp local tokens
        sp = layout.scheme in ("tp-sp", "tp-cp") and t > 1
        layer = megatron_layer_bytes(cfg, S // C, b, t, sp, e)
        if layout.scheme == "tp-cp":  # the whole sequence's keys/values of the rank's heads
            layer += S * b * 2 * (cfg.num_query_groups // t) * cfg.kv_channels * e
        glob = megatron_global_bytes(cfg, S // C, b, t, sp, e)
        transient = megatron_transient_bytes(cfg, S // C, b, t, sp, e)
        layer_input = S // C * b * h * e // (t if sp else 1)
    recompute = layout.recompute == "full"
    act = L * (layer_input if recompute else layer) + glob
    transient += layer if recompute else 0
    return MemoryEstimate(params, grads, optimizer, act,
                          max(transient, table_gradient_bytes(cfg, rows) - act))
