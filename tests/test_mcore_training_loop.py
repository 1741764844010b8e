"""Megatron's own training loop (megatron.training.pretrain) on a plain GPTModel, for real.

Each test runs tests/mcore_pretrain_gpt.py under torchrun with two gloo ranks (CPU) and reads
the per-iteration 'lm loss' from Megatron's log lines. Checked: a tensor-parallel run trains
exactly like a data-parallel one at the same global batch and seed; a run stopped by
--exit-interval after a torch_dist checkpoint and resumed with --load continues exactly like an
uninterrupted one with the distributed optimizer (the resume fix of fixes/optimizer_resume.py);
evaluation runs; --tensorboard-dir gets an events file. The TSP model's own runs through the same
loop are tests/test_pretrain_e2e.py.
"""

import re
from pathlib import Path

import pytest

from tests.pretrain_runner import run_mcore_driver

pytestmark = pytest.mark.slow

TRAIN_ITERS = 6

# What a CPU run needs (no CUDA kernels, gloo), then a tiny GPT and its schedule.
BASE_ARGS = [
    "--distributed-backend", "gloo", "--transformer-impl", "local", "--use-cpu-initialization",
    "--no-gradient-accumulation-fusion", "--no-persist-layer-norm", "--no-masked-softmax-fusion",
    "--no-bias-gelu-fusion", "--no-bias-dropout-fusion",
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
    "--seq-length", "64", "--max-position-embeddings", "64",
    "--micro-batch-size", "2", "--global-batch-size", "4",
    "--train-iters", str(TRAIN_ITERS), "--lr", "1e-3", "--min-lr", "1e-4",
    "--lr-decay-style", "cosine", "--lr-warmup-iters", "1", "--seed", "1234",
    "--hidden-dropout", "0", "--attention-dropout", "0",
    "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "256",
    "--log-interval", "1", "--eval-interval", "3", "--eval-iters", "1",
]

_TRAIN_LOSS = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?\| lm loss: ([0-9.Ee+-]+) \|")
# In-loop evaluation logs "at iteration N |", the final one "at iteration N on validation set |".
_VALID_LOSS = re.compile(r"validation loss at iteration (\d+)(?: on validation set)? \| "
                         r"lm loss value: ([0-9.Ee+-]+)")


def run_pretrain(*args: str, nproc: int = 2, timeout: float = 120.0) -> str:
    """Run the driver under torchrun; return its combined output (fails the test on error)."""
    return run_mcore_driver([*BASE_ARGS, *args], nproc, timeout)


def train_losses(output: str) -> dict[int, float]:
    losses = {int(it): float(loss) for it, loss in _TRAIN_LOSS.findall(output)}
    assert losses, output[-3000:]
    return losses


def assert_close(actual: dict[int, float], expected: dict[int, float], rel: float) -> None:
    assert sorted(actual) == sorted(expected)
    for it in expected:
        assert actual[it] == pytest.approx(expected[it], rel=rel, abs=0), (it, actual, expected)


def save_exit_and_resume(tmp_path: Path, *args: str) -> tuple[dict, dict]:
    """Train to 3 of --train-iters 6, save (torch_dist) and exit; then resume from there."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    first = train_losses(run_pretrain(*args, "--save", str(ckpt), "--save-interval", "3",
                                      "--exit-interval", "3", "--ckpt-format", "torch_dist"))
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    resumed = train_losses(run_pretrain(*args, "--load", str(ckpt), "--ckpt-format", "torch_dist"))
    return first, resumed


def assert_exact_resume(straight: dict, first: dict, resumed: dict) -> None:
    assert sorted(straight) == list(range(1, TRAIN_ITERS + 1))
    assert_close(first, {it: straight[it] for it in (1, 2, 3)}, rel=1e-6)
    assert_close(resumed, {it: straight[it] for it in (4, 5, 6)}, rel=1e-6)


@pytest.fixture(scope="module")
def data_parallel_run(tmp_path_factory):
    """TP=1 x DP=2 with the distributed optimizer, uninterrupted, with TensorBoard: the
    reference of several tests."""
    tensorboard = tmp_path_factory.mktemp("tensorboard")
    output = run_pretrain("--use-distributed-optimizer", "--tensorboard-dir", str(tensorboard))
    return output, tensorboard


def test_tensor_parallel_matches_data_parallel(data_parallel_run):
    # Same global batch (4) and seed: TP=2 x DP=1 must train like TP=1 x DP=2.
    data_parallel = train_losses(data_parallel_run[0])
    assert sorted(data_parallel) == list(range(1, TRAIN_ITERS + 1))
    tensor_parallel = train_losses(run_pretrain("--tensor-model-parallel-size", "2"))
    assert_close(tensor_parallel, data_parallel, rel=1e-5)


def test_evaluation_runs(data_parallel_run):
    valid = dict(_VALID_LOSS.findall(data_parallel_run[0]))
    assert set(valid) == {"3", "6"}  # every --eval-interval, and at the end
    assert all(0.0 < float(loss) < 10.0 for loss in valid.values())


def test_tensorboard_events_written(data_parallel_run):
    events = list(data_parallel_run[1].glob("events.out.tfevents.*"))
    assert events and all(f.stat().st_size > 0 for f in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for f in events:
        accumulator = EventAccumulator(str(f))
        accumulator.Reload()
        if "lm loss" in accumulator.Tags()["scalars"]:
            scalars = {e.step: e.value for e in accumulator.Scalars("lm loss")}
    assert_close(scalars, train_losses(data_parallel_run[0]), rel=1e-6)


def test_exact_resume_distributed_optimizer(data_parallel_run, tmp_path):
    # Catches megatron-core 0.19.2's torch-Adam step bugs (see fixes/optimizer_resume.py):
    # without the fix the resumed Adam step restarts and advances by the number of parameters.
    straight = train_losses(data_parallel_run[0])
    assert_exact_resume(straight, *save_exit_and_resume(tmp_path, "--use-distributed-optimizer"))
