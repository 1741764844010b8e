"""The benchmark's instruments: exact CPU memory accounting, a stable JSON schema, flag errors,
the emulated interconnect (network namespaces and tc, as root)."""

import json
import os
import subprocess
import threading
import time

import pytest
import torch

from benchmarks import report
from benchmarks.compare_parallelism import main as benchmark_main
from benchmarks.exposure import split_waits
from benchmarks.launch import run_ranks
from benchmarks.netns import EmulatedLink, EmulatedNetwork

TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
        "--num-query-groups", "2", "--kv-channels", "8", "--ffn-hidden-size", "64",
        "--vocab-size", "512"]


def _known_tensor_set():
    """Allocations whose live bytes are known at every moment, on two threads."""
    from benchmarks.memory import PeakMemory
    with PeakMemory() as memory:
        a = torch.empty(1000, dtype=torch.float32)      # 4000
        b = torch.empty(2000, dtype=torch.float64)      # + 16000 = 20000
        memory.mark("a_and_b")
        del a                                           # 16000
        c = torch.empty(3000)                           # 28000
        view = c[:10].view(2, 5)                        # a view allocates nothing
        worker = threading.Thread(target=lambda: torch.empty(1250))  # + 5000 = 33000
        worker.start()
        worker.join()
        del b, c, view
    return memory.report.as_dict()


def test_cpu_peak_memory_of_a_known_tensor_set_is_exact():
    report_ = run_ranks(_known_tensor_set, 1)[0]
    start = report_["live_at_start_bytes"]
    assert report_["peak_bytes"] - start == 33000
    assert report_["marks"]["a_and_b"] - start == 20000
    assert report_["rss_peak_bytes"] >= report_["rss_start_bytes"] > 0


def _check_types(record: dict, types: dict, where: str) -> None:
    assert set(record) == set(types), (where, set(record) ^ set(types))
    for key, kind in types.items():
        assert isinstance(record[key], kind), (where, key, type(record[key]))


def test_json_schema_is_stable(tmp_path):
    benchmark_main(TINY + ["--seq-lengths", "32", "64", "--group-size", "2",
                           "--schemes", "tsp", "tp", "--repeats", "2",
                           "--output-dir", str(tmp_path), "--name", "run"])
    results = json.loads((tmp_path / "run.json").read_text())
    _check_types(results, report.TOP_LEVEL_TYPES, "top level")
    assert results["schema_version"] == 3 and results["network"] == {"mode": "loopback"}
    assert [(r["scheme"], r["seq_length"]) for r in results["runs"]] == [
        ("tsp", 32), ("tsp", 64), ("tp", 32), ("tp", 64)]
    for run in results["runs"]:
        _check_types(run, report.RUN_TYPES, run["scheme"])
        times = run["step_time_repeats_s"]
        assert len(times) == 2 and run["step_time_s"] == sum(times) / 2
        assert run["step_time_spread_s"] == max(times) - min(times)
        # every rank waits on some communication; never longer than its step
        assert 0 < run["exposed_s_max"] < max(times)
        assert 0 <= run["exposed_wire_s_max"] <= run["exposed_s_max"]
        assert set(run["exposed_wire_s_by_kind"]) == set(run["exposed_s_by_kind"])
        assert set(run["exposed_s_by_kind"]) <= {kind for r in run["per_rank"]
                                                 for kind in r["transfers"]}
        _check_types(run["predicted"], report.PREDICTED_TYPES, "predicted")
        assert len(run["per_rank"]) == run["group_size"]
        for rank in run["per_rank"]:
            _check_types(rank, report.RANK_TYPES, "per_rank")
            for kind, moved in rank["transfers"].items():
                assert set(moved) == {"sent", "received"}, kind
            # the split covers exactly the waiting timed by kind
            for waited, split in zip(rank["exposed_s"], rank["exposed_split"]):
                assert set(split) == set(waited)
                for kind, seconds in waited.items():
                    assert sum(split[kind].values()) == pytest.approx(seconds, abs=1e-9)
    for name in ("run.md", "run_memory_per_rank.png", "run_bytes_per_rank.png",
                 "run_step_time.png"):
        assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.parametrize("extra,flag", [
    (["--group-size", "1"], "--group-size"),
    (["--seq-lengths", "34"], "--seq-lengths"),
    (["--ffn-hidden-size", "63"], "--ffn-hidden-size"),
    (["--emulate-link", "fast"], "--emulate-link"),
    (["--repeats", "0"], "--repeats"),
    (["--fabric", "h100-node", "--emulate-link", "100"], "--fabric"),
])
def test_flag_errors_name_the_flag(extra, flag, tmp_path):
    argv = TINY + ["--group-size", "2", "--seq-lengths", "64", "--output-dir", str(tmp_path)]
    with pytest.raises(ValueError, match=flag):
        benchmark_main(argv + extra)


def test_without_a_preset_every_shape_flag_is_required(tmp_path):
    with pytest.raises(ValueError, match="--vocab-size"):
        benchmark_main(TINY[:-2] + ["--output-dir", str(tmp_path)])


def test_emulated_link_parses_bandwidth_and_latency():
    assert EmulatedLink.parse("250") == EmulatedLink(250.0, 0.0)
    assert EmulatedLink.parse("250,0.5") == EmulatedLink(250.0, 0.5)
    for bad in ("0", "250,-1", "1,2,3", ""):
        with pytest.raises(ValueError, match="--emulate-link"):
            EmulatedLink.parse(bad)


def test_emulated_link_needs_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PermissionError, match="root"):
        EmulatedNetwork(EmulatedLink(100.0), 2).__enter__()


def _timed_all_reduce(nbytes: int) -> float:
    import torch.distributed as dist
    dist.init_process_group("gloo")
    tensor = torch.ones(nbytes // 4)
    dist.all_reduce(tensor[:16])  # connections up before the clock starts
    start = time.perf_counter()
    dist.all_reduce(tensor)
    return time.perf_counter() - start


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_ranks_talk_over_the_shaped_link_and_the_namespaces_go_away():
    mbit, nbytes = 100.0, 4 * 2 ** 20
    with EmulatedNetwork(EmulatedLink(mbit), 2) as network:
        assert network.rank_namespace(1) in _namespaces()
        elapsed = max(run_ranks(_timed_all_reduce, 2, nbytes, network=network))
    assert network.prefix not in _namespaces()
    # a ring all-reduce of N bytes sends 2N(D-1)/D per rank: N at D = 2
    assert elapsed > 0.8 * nbytes * 8 / (mbit * 1e6), elapsed


def _timeline(posts, waits):
    from megatron_tsp.comm import Timeline
    timeline = Timeline()
    timeline.posts, timeline.waits = posts, waits
    return timeline


def test_waiting_splits_into_a_late_rank_and_the_wire():
    # rank 0 waits on a gather from 1.0 s to 3.0 s; rank 1 posted it at 2.5 s
    # rank 1 waits on it from 2.6 s to 3.0 s, after both posted: all wire
    # a blocking all-reduce: rank 0 in it over [4, 4.5], rank 1 over [4.4, 4.5]
    g, a = ("attn_kv", 0), ("loss", 0)
    rank0 = _timeline({g: 0.5, a: 4.0}, [("attn_kv", [g], 1.0, 3.0), ("loss", [a], 4.0, 4.5)])
    rank1 = _timeline({g: 2.5, a: 4.4}, [("attn_kv", [g], 2.6, 3.0), ("loss", [a], 4.4, 4.5)])
    split0, split1 = split_waits([rank0, rank1])
    assert split0["attn_kv"] == pytest.approx({"late_peer": 1.5, "wire": 0.5})
    assert split0["loss"] == pytest.approx({"late_peer": 0.4, "wire": 0.1})
    assert split1["attn_kv"] == pytest.approx({"late_peer": 0.0, "wire": 0.4})
    assert split1["loss"] == pytest.approx({"late_peer": 0.0, "wire": 0.1})
    with pytest.raises(ValueError, match="rank 1 posted other transfers"):
        split_waits([rank0, _timeline({g: 2.5}, [])])


def test_waiting_on_nothing_posts_nothing():
    """A wait on an empty list of transfers (a ring's first visit) is not a collective: it
    must not enter the timeline as one, which the other ranks would be matched against."""
    from megatron_tsp import comm
    comm.record_timeline()
    comm.wait_all([], "mlp_weights_grad")
    timeline = comm.take_timeline()
    assert timeline.posts == {}
    assert [(kind, keys) for kind, keys, _, _ in timeline.waits] == [("mlp_weights_grad", [])]


def _late_rank_one(delay_s: float):
    """Rank 1 reaches a blocking all-reduce and posts an all-gather `delay_s` after rank 0."""
    from megatron_tsp import comm
    from megatron_tsp import parallel_state as ps
    ps.initialize_tsp(2)
    try:
        comm.all_reduce_sum(torch.ones(4), "warm_up")  # connections up first
        _, before = comm.all_gather_async(torch.ones(4), "warm_up")
        comm.record_timeline()
        comm.wait_all([before], "warm_up")  # posted before recording: no key to match
        if ps.get_tsp_rank() == 1:
            time.sleep(delay_s)
        comm.all_reduce_sum(torch.ones(4), "loss")
        if ps.get_tsp_rank() == 1:
            time.sleep(delay_s)
        _, posted = comm.all_gather_async(torch.ones(4), "attn_kv")
        comm.wait_all([posted], "attn_kv")
        return comm.take_timeline()
    finally:
        ps.destroy_tsp()


def test_a_late_rank_is_told_apart_from_the_wire():
    """Real gloo ranks: rank 0's waiting on a late rank 1 is late-peer time, not wire time."""
    from tests.dist import run_distributed
    delay = 0.4
    split0, split1 = split_waits(run_distributed(_late_rank_one, 2, delay))
    for kind in ("loss", "attn_kv"):
        assert split0[kind]["late_peer"] > 0.9 * delay, split0
        assert split0[kind]["wire"] < 0.25 * delay, split0
        assert split1[kind]["late_peer"] < 0.25 * delay, split1


def test_packed_step_benchmark_writes_both_steps_and_their_ratios(tmp_path):
    """benchmarks/packed_step.py: each repeat of both steps timed and measured, the ratios from
    them, the documents of the packed step covering the sequence; bad sizes named by flag."""
    from benchmarks.packed_step import document_lengths, main as packed_main
    packed_main(TINY + ["--seq-length", "64", "--repeats", "2", "--output-dir", str(tmp_path),
                        "--name", "packed"])
    results = json.loads((tmp_path / "packed.json").read_text())
    summary = results["summary"]
    assert sum(document_lengths(64, 16, 1234)) == 64 and summary["documents"] > 1
    for mode in ("unpacked", "packed"):
        assert len(summary["step_s"][mode]) == 2 and min(summary["step_s"][mode]) > 0
        assert summary["peak_bytes"][mode] > 0
    times = summary["step_s"]
    ratios = [p / u for p, u in zip(times["packed"], times["unpacked"])]
    assert summary["time_ratio_range"] == [min(ratios), max(ratios)]
    assert summary["memory_ratio"] == summary["peak_bytes"]["packed"] / \
        summary["peak_bytes"]["unpacked"]
    assert "packed / unpacked" in (tmp_path / "packed.md").read_text()
    with pytest.raises(ValueError, match="--seq-length"):
        packed_main(TINY + ["--seq-length", "66", "--output-dir", str(tmp_path)])
