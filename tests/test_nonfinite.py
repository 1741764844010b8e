"""Numerical faults injected for real (the last rank's loss made NaN): the update is skipped,
logged and counted, and enough of them in a row stop the job without touching the checkpoint."""

import pytest
import torch

from tests.pretrain_runner import MOCK_RUN, checkpoint_weights, losses_of, run_pretrain

pytestmark = pytest.mark.slow
# the learning-rate schedule must not depend on --train-iters for runs of different length
RUN = MOCK_RUN + ["--tsp-size", "2", "--lr-decay-iters", "100"]


def test_a_nonfinite_iteration_is_skipped_leaving_weights_untouched(tmp_path):
    cache = tmp_path / "cache"
    clean = losses_of(2, RUN + ["--train-iters", "2", "--save", tmp_path / "clean",
                                "--save-interval", "2"], cache)
    code, losses, log = run_pretrain(2, RUN + ["--train-iters", "3", "--save", tmp_path / "nan",
                                               "--save-interval", "3",
                                               "--debug-nonfinite-loss-iterations", "3"], cache)
    assert code == 0, log[-5000:]
    assert [losses[1], losses[2]] == [clean[1], clean[2]]
    assert "iteration 3: non-finite loss or gradient (grad norm nan): update skipped, 1 in a row" \
        in log
    assert "number of skipped iterations:   1 | number of nan iterations:   1" in log
    before, after = checkpoint_weights(tmp_path / "clean", tmp_path / "nan")
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name


def test_consecutive_nonfinite_iterations_stop_the_job_and_keep_the_checkpoint(tmp_path):
    checkpoint = tmp_path / "ckpt"
    code, losses, log = run_pretrain(
        2, RUN + ["--train-iters", "20", "--save", checkpoint, "--save-interval", "4",
                  "--debug-nonfinite-loss-iterations", "3", "5", "6", "7",
                  "--max-consecutive-nonfinite-iterations", "3"], tmp_path / "cache")
    assert code != 0
    # iteration 3 alone is tolerated and iteration 4 trains; 5, 6, 7 in a row stop the job
    assert "iteration 3: non-finite loss or gradient (grad norm nan): update skipped, 1 in a row" \
        in log
    assert losses[4] > 0 and 8 not in losses
    assert ("pretrain_qwen3.py: error: iterations 5-7: 3 in a row had a non-finite loss or "
            "gradient (--max-consecutive-nonfinite-iterations 3)") in log, log[-5000:]
    assert (checkpoint / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    assert sorted(p.name for p in checkpoint.glob("iter_*")) == ["iter_0000004"]
