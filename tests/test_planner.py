"""The planner's formulas against real steps: bytes equal the counters, memory within 10%.

Each scheme runs one warm-up and one measured training step per length on real gloo ranks
(benchmarks.measure, the benchmark's own rank body); the planner (megatron_tsp.planner.transfers /
planner.memory) must predict every transfer kind of every rank byte for byte, and the peak
memory of the busiest rank within 10%.
"""

import pytest

from megatron_tsp.config import Qwen3Config, qwen3_preset
from megatron_tsp.planner.memory import GLOO_COLLECTIVE_COPIES, memory_bytes
from megatron_tsp.planner.plan import main as planner_main
from megatron_tsp.planner.plan import plans
from megatron_tsp.planner.transfers import Layout, transfer_bytes, tp_cp_transfers, tp_sp_transfers

from benchmarks.compare_parallelism import planner_layout
from benchmarks.launch import run_ranks
from benchmarks.measure import measure_scheme

FP32 = 4
BATCH = 2
LENGTHS = [64, 1024]
# vocab a multiple of 128 x D: GPTModel's padded rows then do not change its loss
GQA = Qwen3Config(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                  kv_channels=8, ffn_hidden_size=64, vocab_size=512)
# kv groups < D, untied tables: TSP's multi-owner head-group steps and two vocabulary rings
FEW_GROUPS = Qwen3Config(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                         kv_channels=8, ffn_hidden_size=64, vocab_size=600,
                         tie_word_embeddings=False)
# TSP in every recompute mode (layers/recompute.py)
RUNS = [("tsp", GQA, 2), ("tsp+activations", GQA, 2), ("tsp+selective", GQA, 2),
        ("tsp+full", GQA, 2), ("tp", GQA, 2), ("tp-sp", GQA, 2), ("cp", GQA, 2),
        ("tsp", FEW_GROUPS, 4), ("tsp+full", FEW_GROUPS, 4)]


IDS = [f"{scheme}-D{D}-{'gqa' if cfg is GQA else 'few-groups'}" for scheme, cfg, D in RUNS]


@pytest.fixture(scope="module")
def measured():
    """{run id: per-rank results} from real steps."""
    return {run_id: run_ranks(measure_scheme, D, scheme, vars(cfg), D, LENGTHS, BATCH, 0, 1)
            for run_id, (scheme, cfg, D) in zip(IDS, RUNS)}


@pytest.mark.parametrize("run_id,scheme,cfg,D", [(i, *r) for i, r in zip(IDS, RUNS)], ids=IDS)
def test_counted_bytes_equal_the_formulas(measured, run_id, scheme, cfg, D):
    for rank in measured[run_id]:
        for i, S in enumerate(LENGTHS):
            counted = {kind: (v["sent"], v["received"])
                       for kind, v in rank["lengths"][i]["transfers"].items()}
            expected = transfer_bytes(planner_layout(scheme, D), cfg, S, BATCH, FP32)
            assert counted == expected, (scheme, D, S, rank["rank"])


@pytest.mark.parametrize("run_id,scheme,cfg,D", [(i, *r) for i, r in zip(IDS, RUNS)], ids=IDS)
def test_peak_memory_within_ten_percent(measured, run_id, scheme, cfg, D):
    for i, S in enumerate(LENGTHS):
        peak = max(r["lengths"][i]["memory"]["peak_bytes"] for r in measured[run_id])
        predicted = memory_bytes(planner_layout(scheme, D), cfg, S, BATCH, FP32,
                                 collective_copies=GLOO_COLLECTIVE_COPIES).total
        assert abs(predicted / peak - 1) < 0.10, (scheme, D, S, predicted, peak)


def test_model_state_is_exact(measured):
    for run_id, (scheme, cfg, D) in zip(IDS, RUNS):
        est = memory_bytes(planner_layout(scheme, D), cfg, LENGTHS[0], BATCH, FP32)
        state = measured[run_id][0]["lengths"][0]
        assert state["params_bytes"] == est.params
        assert state["grads_bytes"] == est.grads, run_id
        # Adam's moments, plus one 4-byte step counter per parameter tensor
        assert 0 <= state["optimizer_bytes"] - est.optimizer < 1024


def test_all_schemes_train_the_same_model(measured):
    for i in range(len(LENGTHS)):
        losses = [measured[run_id][0]["lengths"][i]["loss"]
                  for run_id, (_, cfg, _) in zip(IDS, RUNS) if cfg is GQA]
        assert max(losses) - min(losses) < 1e-5 * abs(losses[0]), losses


def test_tp_cp_with_one_sequence_shard_is_tp_sp():
    assert tp_cp_transfers(GQA, 64, 1, 2, 1, 2) == tp_sp_transfers(GQA, 64, 1, 2, 2)


def test_only_tsp_and_cp_kv_bytes_grow_with_sequence_length():
    for scheme, layout in (("tsp", Layout("tsp", tp=4)), ("cp", Layout("cp", cp=4))):
        short, long = (transfer_bytes(layout, GQA, S, 1, 2) for S in (1024, 4096))
        grows = {k for k in short if short[k] != long[k]}
        assert grows == ({"attn_kv", "attn_kv_grad"} if scheme == "tsp" else
                         {"cp_kv", "cp_kv_grad"})


def test_cli_recommends_a_layout_that_fits(capsys):
    rows = planner_main(["--model-size", "8b", "--seq-length", "131072",
                         "--max-position-embeddings", "131072", "--gpus", "8", "--gpu", "h100"])
    assert rows[0].fits and rows[0].layout.scheme == "tsp"
    assert all(p.time_s_per_sequence >= rows[0].time_s_per_sequence for p in rows if p.fits)
    assert f"recommended: {rows[0].layout.name} " in capsys.readouterr().out
    # at short context TSP's weight traffic loses to tensor parallelism's activation traffic
    short = plans(GQA.replace(num_layers=36, hidden_size=4096, num_attention_heads=32,
                              num_query_groups=8, kv_channels=128, ffn_hidden_size=12288,
                              vocab_size=151936), 2048, 8, "h100")
    assert short[0].layout.scheme != "tsp"


def test_packed_documents_are_accepted_and_plan_as_one_sequence(capsys):
    """The launcher's packing flags: the same layouts, memory and bytes (the offsets cost no
    activation), and a line that says so."""
    argv = ["--model-size", "8b", "--seq-length", "131072", "--max-position-embeddings",
            "131072", "--gpus", "8"]
    plain = planner_main(argv)
    packed = planner_main(argv + ["--reset-position-ids", "--reset-attention-mask",
                                  "--eod-mask-loss"])
    assert [(p.layout, p.memory, p.sent, p.received) for p in packed] == \
        [(p.layout, p.memory, p.sent, p.received) for p in plain]
    assert "packed documents: memory and bytes are those of one sequence" in \
        capsys.readouterr().out


def test_the_fastest_recompute_mode_that_fits_the_budget_is_chosen():
    cfg = qwen3_preset("8b")
    tsp8 = {p.layout.recompute: p for p in plans(cfg, 32768, 8, "h100")
            if p.layout.scheme == "tsp" and p.layout.tp == 8}
    memory = {mode: p.memory.total for mode, p in tsp8.items()}
    time = {mode: p.time_s_per_sequence for mode, p in tsp8.items()}
    assert memory["none"] > memory["activations"] > memory["full"]
    assert memory["none"] > memory["selective"] > memory["full"]
    assert time["none"] == time["activations"] < time["selective"] < time["full"]

    def best_tsp8(budget):
        return next(p for p in plans(cfg, 32768, 8, "h100", memory_budget_bytes=budget)
                    if p.fits and p.layout.scheme == "tsp" and p.layout.tp == 8)
    # as fast as keeping everything and smaller; then the fastest that still fits
    assert best_tsp8(memory["none"] + 1).layout.recompute == "activations"
    assert best_tsp8(memory["activations"] - 1).layout.recompute == (
        "selective" if memory["selective"] < memory["activations"] else "full")
    assert best_tsp8(memory["full"] + 1).layout.recompute == "full"


@pytest.mark.parametrize("argv,flag", [
    (["--seq-length", "1024", "--gpus", "8"], "--num-layers"),
    (["--model-size", "8b", "--seq-length", "0", "--gpus", "8"], "--seq-length"),
    (["--model-size", "8b", "--seq-length", "1024", "--gpus", "0"], "--gpus"),
    (["--model-size", "8b", "--seq-length", "1024", "--gpus", "8", "--memory-budget-gb", "0"],
     "--memory-budget-gb"),
])
def test_cli_errors_name_the_flag(argv, flag):
    with pytest.raises(ValueError, match=flag):
        planner_main(argv)


@pytest.mark.parametrize("extra, flag", [
    (["--gpus", "0"], "--gpus"),
    (["--gpus", "8", "--position-embedding-type", "yarn", "--yarn-beta-fast", "0"],
     "--yarn-beta-fast"),
    (["--gpus", "8", "--rotary-scaling-factor", "4"], "--rotary-scaling-factor"),
])
def test_the_command_line_names_the_flag_without_a_traceback(extra, flag):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "megatron_tsp.planner", "--model-size", "8b",
                             "--seq-length", "8192", *extra], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("python -m megatron_tsp.planner: error: ") and \
        flag in result.stderr, result.stderr
