"""The schedules really are TSP, read from the transfer counters of real runs at D = 4.

The MLP moves weights only (bytes independent of sequence length); attention moves weights plus
the kv heads of the local tokens; nothing all-reduces activations.
"""

import pytest

from megatron_tsp import comm
from megatron_tsp import parallel_state as ps
from tests.dist import run_distributed
from tests.tsp_harness import full_batch, tiny_config, train_step

D = 4
FP32 = 4
BATCH = 2
CONFIGS = [tiny_config(heads=8, groups=8), tiny_config(heads=8, groups=2, tied=False)]
LENGTHS = [16, 64]
ALLOWED_KINDS = {"attn_weights", "attn_weights_grad", "attn_kv", "attn_kv_grad", "mlp_weights",
                 "mlp_weights_grad", "vocab_weights", "vocab_weights_grad", "loss",
                 "replicated_grads"}


def _counters_per_length():
    """Per config: {recompute mode: {length: counters}}, keeping everything and recomputing
    everything (layers/recompute.py)."""
    from megatron_tsp.models.qwen3 import build_tsp_qwen3
    ps.initialize_tsp(D)
    out = []
    for cfg in CONFIGS:
        by_mode = {}
        for mode in ("none", "full"):
            model = build_tsp_qwen3(cfg, mode)
            model.init_weights(0)
            per_length = by_mode[mode] = {}
            for seq_length in LENGTHS:
                comm.reset_transfer_counters()
                train_step(model, full_batch(cfg.vocab_size, BATCH, seq_length))
                per_length[seq_length] = comm.transfer_counters()
        out.append(by_mode)
    ps.destroy_tsp()
    return out


@pytest.fixture(scope="module")
def all_counters():
    return run_distributed(_counters_per_length, D)


@pytest.fixture(scope="module")
def counters(all_counters):
    """Keeping everything for backward, the default."""
    return [[by_mode["none"] for by_mode in rank] for rank in all_counters]


def _mlp_weight_bytes(cfg):
    fc1 = 2 * cfg.ffn_hidden_size // D * cfg.hidden_size
    fc2 = cfg.hidden_size * cfg.ffn_hidden_size // D
    return (fc1 + fc2) * FP32


def test_only_tsp_transfer_kinds_exist(counters):
    for rank_counters in counters:
        for per_length in rank_counters:
            for seq_length, kinds in per_length.items():
                assert set(kinds) <= ALLOWED_KINDS, f"unexpected transfer at S={seq_length}"


def test_mlp_bytes_do_not_depend_on_sequence_length(counters):
    for rank_counters in counters:
        for cfg, per_length in zip(CONFIGS, rank_counters):
            short, long = (per_length[s] for s in LENGTHS)
            for kind in ("mlp_weights", "mlp_weights_grad"):
                assert short[kind] == long[kind]
            shard = _mlp_weight_bytes(cfg) * cfg.num_layers
            # forward and backward each pass the weights D-1 hops; the fp32 accumulator D hops
            assert short["mlp_weights"] == {"sent": 2 * (D - 1) * shard,
                                            "received": 2 * (D - 1) * shard}
            assert short["mlp_weights_grad"] == {"sent": D * shard, "received": D * shard}


@pytest.mark.parametrize("mode,gathers", [("none", 1), ("full", 2)])
def test_attention_moves_weights_and_local_kv_heads_only(all_counters, mode, gathers):
    for rank_counters in all_counters:
        for cfg, by_mode in zip(CONFIGS, rank_counters):
            per_length = by_mode[mode]
            short, long = (per_length[s] for s in LENGTHS)
            assert short["attn_weights"] == long["attn_weights"]
            assert short["attn_weights_grad"] == long["attn_weights_grad"]
            for seq_length in LENGTHS:
                kinds = per_length[seq_length]
                local_kv = (seq_length // D) * BATCH * 2 * cfg.num_query_groups \
                    * cfg.kv_channels * FP32 * cfg.num_layers
                # k/v of the local tokens gathered in forward, and again where backward
                # recomputes the attention core
                assert kinds["attn_kv"]["sent"] == gathers * local_kv
                assert kinds["attn_kv"]["received"] == gathers * local_kv * (D - 1)
                assert kinds["attn_kv_grad"]["sent"] == local_kv * (D - 1)


def test_attention_weight_broadcast_bytes(counters):
    for rank, rank_counters in enumerate(counters):
        for cfg, per_length in zip(CONFIGS, rank_counters):
            kinds = per_length[LENGTHS[0]]
            h, hd = cfg.hidden_size, cfg.kv_channels
            qkv = (cfg.num_attention_heads + 2 * cfg.num_query_groups) * hd * h // D
            proj = h * cfg.num_attention_heads * hd // D
            shard = (qkv + proj) * FP32 * cfg.num_layers
            # each shard is broadcast in forward and again in backward
            assert kinds["attn_weights"] == {"sent": 2 * shard, "received": 2 * (D - 1) * shard}
            assert kinds["attn_weights_grad"] == {"sent": (D - 1) * shard,
                                                  "received": (D - 1) * shard}


def _kv_exchanges():
    """At D = 2 (two head-group steps), the group of every all-gather, the TSP group, and the
    order in which the K/V exchanges are posted and waited on."""
    import torch.distributed as dist
    from megatron_tsp import layout
    from megatron_tsp.models.qwen3 import build_tsp_qwen3
    ps.initialize_tsp(2)
    seen, events = [], []
    originals = dist.all_gather_single, dist.reduce_scatter_single, layout.wait_all

    def gather(*args, group=None, **kwargs):
        seen.append(group)
        events.append("gather")
        return originals[0](*args, group=group, **kwargs)

    def scatter(*args, **kwargs):
        events.append("scatter")
        return originals[1](*args, **kwargs)

    def wait(handles, kind):
        events.append(f"wait {kind}")
        return originals[2](handles, kind)

    dist.all_gather_single, dist.reduce_scatter_single, layout.wait_all = gather, scatter, wait
    try:
        cfg = tiny_config(heads=8, groups=2)
        model = build_tsp_qwen3(cfg)
        model.init_weights(0)
        train_step(model, full_batch(cfg.vocab_size, BATCH, 16))
        tsp = ps.get_tsp_group()
        return ([dist.get_process_group_ranks(g) for g in seen], seen.count(tsp),
                dist.get_process_group_ranks(tsp), events, cfg.num_layers)
    finally:
        dist.all_gather_single, dist.reduce_scatter_single, layout.wait_all = originals
        ps.destroy_tsp()


@pytest.fixture(scope="module")
def kv_exchanges():
    return run_distributed(_kv_exchanges, 2)


def test_keys_and_values_travel_on_a_group_of_their_own(kv_exchanges):
    # on NCCL one group's operations run in order: on the TSP group the K/V all-gather would
    # queue behind the next head-group's weight broadcast, already in flight
    for ranks, on_tsp_group, tsp_ranks, _, _ in kv_exchanges:
        assert ranks and all(r == tsp_ranks for r in ranks)
        assert on_tsp_group == 0


def test_each_kv_exchange_is_in_flight_while_the_other_step_computes(kv_exchanges):
    """Forward posts step 2's all-gather before it waits for step 1's (and runs step 1's
    attention meanwhile); backward posts step 2's dK/dV reduce-scatter before it waits for step
    1's. A blocking exchange would wait right after each post."""
    for *_, events, layers in kv_exchanges:
        forward = ["gather", "gather", "wait attn_kv", "wait attn_kv"] * layers
        backward = ["scatter", "scatter", "wait attn_kv_grad", "wait attn_kv_grad"] * layers
        assert events == forward + backward, events
