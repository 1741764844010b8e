"""The launch's memory check (megatron_tsp/training/memory_check.py) and the planner's recompute
flags: Qwen3-8B at 131,072 tokens, D = 8 on 8 ranks, bf16, distributed optimizer, keeping every
activation (140 GB per GPU predicted) is refused on 80 GB devices, naming recompute flags that
fit; full recompute passes; --no-memory-check skips; the launcher checks before it prepares the
data or builds the model. The devices are fake: torch.cuda reports an available 80 GB GPU (the
check's own code runs unchanged)."""

import re
import sys
from types import SimpleNamespace

import pytest
import torch

from megatron_tsp.config import qwen3_preset
from megatron_tsp.layers.recompute import FULL, NONE
from megatron_tsp.planner.memory import memory_bytes
from megatron_tsp.planner.plan import GB, GPUS, USABLE_MEMORY_FRACTION, tsp_layout
from megatron_tsp.planner.plan import main as planner_main
from megatron_tsp.planner.transfers import Layout
from megatron_tsp.training.memory_check import (
    FULL_RECOMPUTE, check_launch_memory, check_memory, predicted_memory)
from tests.launch_inputs import prepared_args

H100 = GPUS["h100"].memory_bytes  # 80 GiB
LAUNCH = ["--tsp-size", "8", "--model-size", "8b", "--seq-length", "131072",
          "--max-position-embeddings", "131072", "--bf16", "--use-distributed-optimizer",
          "--mock-data", "--micro-batch-size", "1", "--train-iters", "10", "--lr", "1e-4"]
FULL_FLAGS = FULL_RECOMPUTE.split()
PLANNER = ["--model-size", "8b", "--seq-length", "131072", "--max-position-embeddings", "131072",
           "--gpus", "8", "--distributed-optimizer"]


@pytest.fixture(autouse=True)
def _eight_ranks(monkeypatch):
    for name, value in (("WORLD_SIZE", "8"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)


@pytest.fixture
def gpu_of_80_gb(monkeypatch):
    """torch.cuda as an 80 GB GPU shows itself to the check."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(name="fake H100", total_memory=H100))


def _offered(message: str):
    """{flags: GB} of the alternatives a refusal names."""
    return {flags: float(gb) for flags, gb in re.findall(r"^  (--.*): ([0-9.]+) GB$", message,
                                                          flags=re.MULTILINE)}


def test_keeping_every_activation_at_128k_is_refused_naming_flags_that_fit():
    with pytest.raises(ValueError) as refused:
        check_memory(prepared_args(LAUNCH), H100, "cuda:0")
    message = str(refused.value)
    assert "140.3 GB per GPU" in message and "--no-memory-check" in message, message
    offered = _offered(message)
    assert FULL_RECOMPUTE in offered, message
    # each offered change, given to the launcher, passes the check with the peak it was offered
    for flags, gb in offered.items():
        args = prepared_args([*LAUNCH, *flags.split()])
        assert f"predicts {gb:.1f} GB per GPU" in check_memory(args, H100), flags
    # what is predicted not to fit is not offered
    assert "--tsp-recompute-activations" not in offered
    assert "--recompute-granularity selective" not in offered


def test_full_recompute_passes_and_the_skip_flag_skips():
    line = check_memory(prepared_args([*LAUNCH, *FULL_FLAGS]), H100, "cuda:0")
    assert line.startswith("memory check:") and "41.1 GB per GPU" in line, line
    skipped = check_memory(prepared_args([*LAUNCH, "--no-memory-check"]), H100)
    assert "skipped (--no-memory-check)" in skipped


def test_the_prediction_follows_the_launch_settings():
    """Shape flags over the preset, micro-batch, precision, data parallelism, the distributed
    optimizer and recompute each change the prediction as the planner's memory model says."""
    cfg = qwen3_preset("8b").replace(max_position_embeddings=131072)

    def planner(layout, S=131072, b=1, e=2, distributed=True, config=cfg):
        return memory_bytes(layout, config, S, b, e, distributed).total

    full = Layout("tsp", tp=8, recompute="full")
    assert predicted_memory(prepared_args([*LAUNCH, *FULL_FLAGS])).total == planner(full)
    assert predicted_memory(prepared_args(LAUNCH)).total == planner(Layout("tsp", tp=8))
    changed = [*LAUNCH, *FULL_FLAGS, "--num-layers", "12", "--micro-batch-size", "2",
               "--seq-length", "65536"]
    assert predicted_memory(prepared_args(changed)).total == planner(
        full, S=65536, b=2, config=cfg.replace(num_layers=12))
    fp32 = [a for a in LAUNCH if a != "--bf16"]
    assert predicted_memory(prepared_args([*fp32, *FULL_FLAGS])).total == planner(full, e=4)
    tsp4 = [*LAUNCH[2:], *FULL_FLAGS, "--tsp-size", "4"]  # 2 data-parallel replicas
    for distributed in (True, False):
        argv = tsp4 if distributed else [a for a in tsp4 if a != "--use-distributed-optimizer"]
        assert predicted_memory(prepared_args(argv)).total == planner(
            Layout("tsp", tp=4, dp=2, recompute="full"), distributed=distributed)


def test_block_recompute_is_per_layer_and_megatron_shorthands_map_alike():
    block = ["--recompute-granularity", "full", "--recompute-method", "block",
             "--recompute-num-layers", "23"]
    args = prepared_args([*LAUNCH, *block])
    assert tsp_layout(8, 1, args, 36).layers == (FULL,) * 23 + (NONE,) * 13
    none, full = (predicted_memory(prepared_args(argv)).total
                  for argv in (LAUNCH, [*LAUNCH, *FULL_FLAGS]))
    assert full < predicted_memory(args).total < none
    selective = predicted_memory(prepared_args([*LAUNCH, "--recompute-granularity", "selective"]))
    assert predicted_memory(prepared_args([*LAUNCH, "--recompute-activations"])) == selective


def test_pipeline_stages_are_not_checked():
    args = prepared_args([*LAUNCH[2:], "--tsp-size", "4", "--pipeline-model-parallel-size", "2"])
    assert "not applied with --pipeline-model-parallel-size 2" in check_memory(args, H100)


def test_the_device_check_reads_the_gpu_and_prints_on_rank_0(gpu_of_80_gb, capsys):
    with pytest.raises(ValueError, match="--recompute-granularity full"):
        check_launch_memory(prepared_args(LAUNCH))
    check_launch_memory(prepared_args([*LAUNCH, *FULL_FLAGS]))
    assert f"{USABLE_MEMORY_FRACTION * H100 / GB:.1f} GB usable on cuda:0" in \
        capsys.readouterr().out


def test_on_cpu_nothing_is_checked(capsys):
    check_launch_memory(prepared_args(LAUNCH))  # no CUDA device here
    assert capsys.readouterr().out == ""


def _launcher(monkeypatch):
    """pretrain_qwen3's main, with the two steps after the checks recording that they ran:
    preparing the data, and pretrain() (Megatron's loop, where the model is built)."""
    import pretrain_qwen3
    reached = []

    def step(name):
        def record(*args, **kwargs):
            reached.append(name)
            raise SystemExit(0)
        return record

    monkeypatch.setattr(pretrain_qwen3, "prepare_embedded_data", step("data"))
    monkeypatch.setattr(pretrain_qwen3, "pretrain", step("model"))
    monkeypatch.setattr(sys, "argv", ["pretrain_qwen3.py"])
    return pretrain_qwen3.main, reached


def test_the_launcher_checks_before_the_data_and_the_model(gpu_of_80_gb, monkeypatch, capsys):
    main, reached = _launcher(monkeypatch)
    with pytest.raises(SystemExit) as refused:
        main(list(LAUNCH))
    assert refused.value.code == 2 and reached == []
    error = capsys.readouterr().err
    assert error.startswith("pretrain_qwen3.py: error: ") and FULL_RECOMPUTE in error, error
    for argv in ([*LAUNCH, *FULL_FLAGS], [*LAUNCH, "--no-memory-check"]):
        with pytest.raises(SystemExit):
            main(argv)
    assert reached == ["data", "data"]
    assert "memory check:" in capsys.readouterr().out


def test_planner_takes_the_launchers_recompute_flags(capsys):
    rows = planner_main([*PLANNER, *FULL_FLAGS])
    assert {p.layout.recompute for p in rows} == {"full"}
    tsp8 = next(p for p in rows if p.layout.name == "tsp8+full")
    assert tsp8.memory.total == predicted_memory(prepared_args([*LAUNCH, *FULL_FLAGS])).total
    rows = planner_main([*PLANNER, "--recompute-granularity", "selective",
                         "--recompute-modules", "core_attn", "mlp"])
    assert {p.layout.scheme for p in rows} == {"tsp"}  # Megatron's layouts: none or full only
    assert "recompute selective-core_attn-mlp" in capsys.readouterr().out
    # no recompute flag: every mode, as before
    modes = {p.layout.recompute for p in planner_main(PLANNER) if p.layout.scheme == "tsp"}
    assert modes == {"none", "activations", "selective", "full"}


def test_planner_refuses_what_the_layers_refuse():
    with pytest.raises(ValueError, match="--recompute-num-layers 2 with --recompute-method"):
        planner_main([*PLANNER, "--recompute-granularity", "full", "--recompute-method",
                      "uniform", "--recompute-num-layers", "2"])


def test_when_the_model_state_alone_does_not_fit_no_shorter_sequence_is_offered(monkeypatch):
    """Qwen3-8B on one 16 GiB GPU: params, grads and Adam alone exceed it, so the advice is more
    GPUs, not a shorter --seq-length (which it offered before)."""
    monkeypatch.setenv("WORLD_SIZE", "1")
    args = prepared_args(["--model-size", "8b", "--seq-length", "4096", "--bf16", "--mock-data",
                          "--micro-batch-size", "1", "--train-iters", "10", "--lr", "1e-4"])
    with pytest.raises(ValueError, match="the model state alone .* exceeds it: add GPUs") as no:
        check_memory(args, 16 * 2 ** 30, "cuda:0")
    assert "--seq-length" not in str(no.value).split("over the")[1], str(no.value)
