"""Every script in examples/ launches with flags the launcher accepts and the planner says fit
the GPUs it states. Each script states the command a user types (`# usage: ...`) and its GPUs
(`# GPUs: N x KIND`, KIND one of the planner's); run with PRINT_ARGS=1 it prints
pretrain_qwen3.py's flags, one per line, and runs nothing. Those flags go through the launcher's
argument checks (prepare_args, as pretrain_qwen3.py calls it, with WORLD_SIZE = N) and its memory
check against KIND's memory. Environment variables naming inputs get small stand-ins: a corpus,
a directory, and for --use-checkpoint-args a checkpoint holding the args an import of the
stated model writes (the converter's own) with one small tensor in place of the weights."""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from megatron_tsp.planner.plan import GPUS
from megatron_tsp.training.memory_check import check_memory
from tests.dist import run_distributed
from tests.launch_inputs import prepared_args, write_dataset

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(path for path in (ROOT / "examples").iterdir() if path.is_file())
_USAGE = re.compile(r"^# usage: (.+)$", re.MULTILINE)
_GPUS = re.compile(r"^# GPUs: (\d+) x (\w+)$", re.MULTILINE)


def stated(script: Path):
    """(environment, arguments, GPU count, GPU kind) the script's header states."""
    text = script.read_text()
    usage, gpus = _USAGE.search(text), _GPUS.search(text)
    assert usage and gpus, f"{script.name} states no '# usage:' or '# GPUs: N x KIND' line"
    tokens = shlex.split(usage.group(1))
    environment = {}
    while "=" in tokens[0]:
        name, value = tokens.pop(0).split("=", 1)
        environment[name] = value
    at_script = next(i for i, token in enumerate(tokens) if token.endswith(f"/{script.name}"))
    return environment, tokens[at_script + 1:], int(gpus.group(1)), gpus.group(2)


def printed_flags(script: Path, environment: dict, arguments: list) -> list:
    """pretrain_qwen3.py's flags as the script gives them (PRINT_ARGS=1)."""
    run = subprocess.run(["bash", str(script), *arguments], capture_output=True, text=True,
                         env={**os.environ, **environment, "PRINT_ARGS": "1"}, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def _write_imported_checkpoint(directory: Path, model_size: str) -> None:
    """A release checkpoint with the Megatron args import-hf writes for `model_size`."""
    import torch
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from megatron_tsp.config import qwen3_preset
    from megatron_tsp.conversion.convert import _megatron_args
    torch.distributed.init_process_group("gloo")
    args = _megatron_args(qwen3_preset(model_size), 1, torch.bfloat16, str(directory))
    weight = ShardedTensor.from_rank_offsets("weight", torch.zeros(4), (0, 0, 1))
    (directory / "release").mkdir(parents=True)
    dist_checkpointing.save({"args": args, "weight": weight}, str(directory / "release"))
    (directory / "latest_checkpointed_iteration.txt").write_text("release")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """{environment variable: value} for the inputs the scripts read."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "hf").mkdir()  # the launcher reads only that the tokenizer directory exists
    run_distributed(_write_imported_checkpoint, 1, root / "imported", "8b")
    return {"HF": str(root / "hf"), "TOKENIZER": str(root / "hf"),
            "DATA": str(write_dataset(root / "corpus", 200)), "CKPT": str(root / "imported"),
            "SAVE": str(root / "run")}


# the checkpoint's metadata is read in this process, outside any process group, on purpose
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.parametrize("script", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_passes_the_launch_checks_and_fits_its_gpus(script, stand_ins, monkeypatch):
    environment, arguments, gpus, kind = stated(script)
    environment.update(stand_ins)
    flags = printed_flags(script, environment, arguments)
    monkeypatch.setenv("WORLD_SIZE", str(gpus))
    args = prepared_args(flags)
    line = check_memory(args, GPUS[kind].memory_bytes, kind)  # raises if it does not fit
    assert line.startswith("memory check:") and "within" in line, line


def test_a_script_whose_flags_do_not_fit_fails(tmp_path, stand_ins, monkeypatch):
    """The check above fails on the launch this project shipped as its 128K example before:
    Qwen3-8B at 131,072 tokens keeping every activation."""
    script = tmp_path / "keeps_everything.sh"
    script.write_text("#!/usr/bin/env bash\n"
                      "# usage: bash examples/keeps_everything.sh\n# GPUs: 8 x h100\n"
                      "printf '%s\\n' --tsp-size 8 --model-size 8b --seq-length 131072 "
                      "--max-position-embeddings 131072 --bf16 --use-distributed-optimizer "
                      "--micro-batch-size 1 --train-iters 10 --lr 1e-4 --mock-data\n")
    _, arguments, gpus, kind = stated(script)
    monkeypatch.setenv("WORLD_SIZE", str(gpus))
    args = prepared_args(printed_flags(script, stand_ins, arguments))
    with pytest.raises(ValueError, match="--recompute-granularity full"):
        check_memory(args, GPUS[kind].memory_bytes, kind)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_the_prediction_takes_the_checkpoints_shape(stand_ins, monkeypatch):
    """With --use-checkpoint-args the memory check predicts the imported model (Qwen3-8B), not
    the --model-size preset (tiny by default)."""
    from megatron_tsp.config import qwen3_preset
    from megatron_tsp.planner.memory import memory_bytes
    from megatron_tsp.planner.transfers import Layout
    from megatron_tsp.training.memory_check import predicted_memory
    monkeypatch.setenv("WORLD_SIZE", "8")
    args = prepared_args(["--load", stand_ins["CKPT"], "--use-checkpoint-args", "--tsp-size", "8",
                          "--seq-length", "8192", "--bf16", "--mock-data", "--micro-batch-size",
                          "1", "--train-iters", "10", "--lr", "1e-4"])
    expected = memory_bytes(Layout("tsp", tp=8), qwen3_preset("8b"), 8192, 1, 2)
    assert predicted_memory(args) == expected
