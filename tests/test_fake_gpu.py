"""The GPU code path without a GPU: Qwen3-8B's shape (2 layers) at 131,072 tokens in bf16, as rank
0 and rank 7 of D = 8, on fake CUDA tensors (tests/fake_gpu.py): every tensor stays on the device,
nothing waits on the host, no attention-score-shaped tensor exists, gradients come back in the
parameters' dtype and device, and the peak memory of the step is the planner's to within 10%."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from megatron_tsp.config import qwen3_preset
from megatron_tsp.planner.inference import bytes_per_cached_token
from megatron_tsp.planner.transfers import Layout
from megatron_tsp.planner.memory import memory_bytes
from tests.fake_gpu import StepAudit
from tests.pretrain_runner import ROOT

D, S, LAYERS = 8, 131072, 2
BF16 = 2

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="the fake CUDA shim (tests/fake_cuda.cpp) needs g++")


def fake_gpu_steps(ranks, *extra) -> list:
    """tests/fake_gpu_step.py's report for each rank, the ranks run side by side."""
    command = [sys.executable, str(ROOT / "tests" / "fake_gpu_step.py"), "--tsp-size", str(D),
               "--model-size", "8b", "--num-layers", str(LAYERS), "--seq-length", str(S),
               "--dtype", "bf16", *extra]
    runs = [subprocess.Popen(command + ["--rank", str(rank)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for rank in ranks]
    reports = []
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, out[-3000:] + err[-6000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


@pytest.fixture(scope="module")
def first_and_last_rank():
    return fake_gpu_steps([0, D - 1])


def test_step_stays_on_the_device_and_never_waits_on_the_host(first_and_last_rank):
    for report in first_and_last_rank:
        assert report["off_device"] == [], report
        assert report["host_syncs"] == [], report
        assert report["score_shaped"] == [], report
        assert report["wrong_grads"] == [], report
        assert report["loss"] == "() torch.float32 cuda:0", report


def test_peak_memory_is_the_planners_within_ten_percent(first_and_last_rank):
    cfg = qwen3_preset("8b").replace(num_layers=LAYERS)
    predicted = memory_bytes(Layout("tsp", tp=D, recompute="full"), cfg, S, 1, BF16)
    for report in first_and_last_rank:
        ratio = report["peak_bytes"] / predicted.total
        assert 0.9 <= ratio <= 1.1, (report["rank"], report["peak_bytes"], predicted)


def test_packed_documents_stay_on_the_device_at_the_unpacked_memory(first_and_last_rank):
    """The 128K recipe's step: documents of mixed lengths, from one token to 64K
    (fake_gpu_step.PACKED_LENGTHS), packed in the 131,072 tokens, with YaRN (factor 4 over 32K):
    torch's varlen flash kernel per chunk, its offsets made from host tokens before the step,
    YaRN's cos/sin made on the device; the same audit, and the peak of the unpacked step within
    1%."""
    for report, unpacked in zip(fake_gpu_steps([0, D - 1], "--packed", "--yarn"),
                                first_and_last_rank):
        assert report["off_device"] == [] and report["host_syncs"] == [], report
        assert report["score_shaped"] == [] and report["wrong_grads"] == [], report
        assert report["peak_bytes"] <= 1.01 * unpacked["peak_bytes"], (report, unpacked)


def test_the_audit_sees_what_a_gpu_step_must_not_do():
    """CPU tensors stand for tensors off the device here: the audit must flag each fault."""
    audit = StepAudit(torch.device("cuda"), chunk=4)
    with audit:
        scores = torch.ones(8, 12)      # two dims that are multiples of the chunk
        scores.nonzero()                # a data-dependent shape: the host must read the count
        scores.sum().item()             # a value read back
    report = audit.report()
    assert any("on cpu" in entry for entry in report["off_device"]), report
    assert {"aten.nonzero", "aten._local_scalar_dense"} <= set(report["host_syncs"]), report
    assert any("(8, 12)" in entry for entry in report["score_shaped"]), report


def test_keeping_everything_stays_on_the_device_and_is_the_planners_memory():
    """The default mode (no recompute flag) keeps autograd graphs from forward: the same audit,
    and its peak within 10% of the planner's, on rank 0."""
    report, = fake_gpu_steps([0], "--recompute", "none")
    assert report["off_device"] == [] and report["host_syncs"] == [], report
    assert report["score_shaped"] == [] and report["wrong_grads"] == [], report
    cfg = qwen3_preset("8b").replace(num_layers=LAYERS)
    predicted = memory_bytes(Layout("tsp", tp=D, recompute="none"), cfg, S, 1, BF16)
    assert 0.9 <= report["peak_bytes"] / predicted.total <= 1.1, (report, predicted)


def test_generation_stays_on_the_device_and_never_waits_on_the_host():
    """Prefill of a 131,067-token prompt (padded to 131,072) and two decode steps, as ranks 0
    and 7 of D = 8 in bf16: nothing leaves the device or waits on the host (prefill once built
    a CPU index with nonzero and copied it to the device at every layer), no score-shaped
    tensor, and the cache is bf16 on the device holding the rank's share of the tokens."""
    n, new_tokens = S - 5, 3
    cfg = qwen3_preset("8b").replace(num_layers=LAYERS)
    for report in fake_gpu_steps([0, D - 1], "--generate", str(new_tokens),
                                 "--seq-length", str(n)):
        assert report["off_device"] == [] and report["host_syncs"] == [], report
        assert report["score_shaped"] == [], report
        assert report["cache"] == "torch.bfloat16 cuda:0", report
        assert report["logits"] == f"(1, {cfg.vocab_size}) torch.float32 cuda:0", report
        # rank r holds zigzag chunks r and 2D-1-r of c = S/2D tokens: the 5 padding tokens end
        # rank 0's second chunk, so it holds the fewest and caches both decoded tokens
        c = S // (2 * D)
        expected = {0: 2 * c - 5 + new_tokens - 1, D - 1: 2 * c}[report["rank"]]
        assert report["cached_tokens"] == expected, report
        assert report["cache_bytes"] == expected * bytes_per_cached_token(cfg, BF16), report
