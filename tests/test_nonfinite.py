"""Numerical faults injected for real (the last rank's loss made NaN): the update is skipped,
logged and counted, and enough of them in a row stop the job without touching the checkpoint."""

import pytest
import torch

from tests.pretrain_runner import MOCK_RUN, checkpoint_view, checkpoint_weights, run_pretrain

pytestmark = pytest.mark.slow
RUN = MOCK_RUN + ["--tsp-size", "2"]


def test_nonfinite_iterations_are_skipped_and_enough_in_a_row_stop_the_job(tmp_path):
    """A NaN loss at iteration 3 (the update skipped: the weights saved after it equal those
    saved after iteration 2), then at 5, 6 and 7: three in a row stop the job, without a save."""
    checkpoint = tmp_path / "ckpt"
    code, losses, log = run_pretrain(
        2, RUN + ["--train-iters", "20", "--save", checkpoint, "--save-interval", "1",
                  "--debug-nonfinite-loss-iterations", "3", "5", "6", "7",
                  "--max-consecutive-nonfinite-iterations", "3"], tmp_path / "cache")
    assert code != 0
    assert "iteration 3: non-finite loss or gradient (grad norm nan): update skipped, 1 in a row" \
        in log
    assert "number of skipped iterations:   1 | number of nan iterations:   1" in log
    assert losses[4] > 0 and 8 not in losses
    assert ("pretrain_qwen3.py: error: iterations 5-7: 3 in a row had a non-finite loss or "
            "gradient (--max-consecutive-nonfinite-iterations 3)") in log, log[-5000:]
    assert (checkpoint / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    assert sorted(p.name for p in checkpoint.glob("iter_*")) == [
        f"iter_{i:07d}" for i in range(1, 7)]
    before, after = checkpoint_weights(checkpoint_view(checkpoint, 2, tmp_path / "at2"),
                                       checkpoint_view(checkpoint, 3, tmp_path / "at3"))
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name
