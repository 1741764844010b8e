"""scripts/gpu_check.sh without a GPU: its helper's arithmetic on a canned log (tokens/s, MFU, the
planner's memory prediction), the loss check, and a clear refusal when there is no CUDA device."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.pretrain_runner import script_module

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _report():
    return script_module("scripts/gpu_check_report.py")


def _iteration(i, loss, ms=400.0):
    return (f" [2026-01-01 00:00:0{i}] iteration        {i}/       5 | consumed samples:   {i} | "
            f"elapsed time per iteration (ms): {ms} | learning rate: 1.000000E-04 | global batch "
            f"size:     1 | lm loss: {loss} | loss scale: 1.0 | grad norm: 1.234 |")


def _throughput(rate, mib):
    return f" tokens/s: {rate} | peak memory per TSP rank (MiB): {mib}"


# the first interval times nothing (its clock starts at the first micro-batch): dropped
CANNED = "\n".join([_throughput(99999999.0, 40000.0), _iteration(1, "1.196000E+01", 9000.0),
                    _throughput(80000.0, 50000.0), _iteration(2, "1.190000E+01"),
                    _throughput(84000.0, 51000.5), _iteration(3, "1.180000E+01"),
                    _throughput(82000.0, 50500.0), _iteration(4, "1.170000E+01")]) + "\n"


def test_mfu_and_planner_prediction_from_a_canned_log(tmp_path, capsys):
    from megatron_tsp.config import qwen3_preset
    from megatron_tsp.planner.transfers import Layout
    from megatron_tsp.planner.memory import memory_bytes
    report = _report()
    log = tmp_path / "b.log"
    log.write_text(CANNED)
    code = report.main(["throughput", str(log), "--model-size", "1.7b", "--num-layers", "4",
                        "--seq-length", "32768", "--device-name", "NVIDIA H200"])
    out = capsys.readouterr().out
    assert code == 0, out
    # Qwen3-1.7B's matmul weights: per layer q,k,v,o (16 + 2 x 8 + 16 heads x 128) x 2048 and
    # the SwiGLU MLP 3 x 6144 x 2048; the tied output layer 151936 x 2048 (already a multiple of 128)
    layer = (16 + 2 * 8) * 128 * 2048 + 2048 * 16 * 128 + 3 * 6144 * 2048
    per_token = 6 * (4 * layer + 151936 * 2048) + 6 * 4 * 2048 * 32768
    rate = 82000.0  # median of 80000, 84000, 82000
    mfu = rate * per_token / 989e12
    assert f"{rate:.0f} tokens/s (median of 3), MFU {100 * mfu:.1f}%" in out, out
    cfg = qwen3_preset("1.7b").replace(num_layers=4)
    predicted = memory_bytes(Layout("tsp", tp=1, recompute="full"), cfg, 32768, 1, 2).total
    ratio = 51000.5 * 2 ** 20 / predicted
    assert f"planner {predicted / 2**30:.2f} GiB, measured/planner {ratio:.2f}" in out, out
    assert out.count("RESULT ") == 1 and "RESULT-MEMORY " in out


def test_flops_per_token_counts_qwen3_1_7b_as_1_7_billion_parameters():
    report = _report()
    cfg = report.model_config("1.7b")
    params = report.flops_per_token(cfg, 0) / 6
    assert 1.65e9 < params < 1.8e9, params
    assert report.flops_per_token(cfg, 4096, recompute=True) > report.flops_per_token(cfg, 4096)
    assert report.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    with pytest.raises(ValueError, match="--peak-tflops"):
        report.peak_flops("Some GPU")


@pytest.mark.parametrize("losses, code, verdict", [
    (["8.3E+00", "8.1E+00", "7.9E+00"], 0, "RESULT PASS all finite: 3 iterations"),
    (["8.3E+00", "nan", "7.9E+00"], 1, "RESULT FAIL non-finite loss at iterations [2]"),
    ([], 1, "RESULT FAIL no 'lm loss' in the log: RuntimeError: CUDA error"),
])
def test_losses_must_all_be_finite(tmp_path, capsys, losses, code, verdict):
    log = tmp_path / "a.log"
    log.write_text("\n".join([_iteration(i + 1, v) for i, v in enumerate(losses)]
                             + ["RuntimeError: CUDA error: no kernel image"]) + "\n")
    assert _report().main(["losses", str(log), "--expect", str(len(losses))]) == code
    assert verdict in capsys.readouterr().out


def test_sdpa_cases_are_the_zigzag_chunks():
    cases = _report().sdpa_cases(32768)
    assert (1, 0, 16384, 16384) in cases and (1, 1, 16384, 32768) in cases
    assert (8, 0, 2048, 2048) in cases and (8, 15, 2048, 32768) in cases


def test_script_parses_and_refuses_clearly_without_cuda(tmp_path):
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run its checks")
    env = dict(os.environ, GPU_CHECK_OUT=str(tmp_path), PYTHON=sys.executable)
    env.pop("GPU_CHECK_CPU_REHEARSAL", None)
    result = subprocess.run(["bash", str(SCRIPT), "--quick"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no CUDA device" in result.stderr
    assert "iteration" not in result.stdout  # nothing was run
