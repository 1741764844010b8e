"""Numerical faults injected for real (the last rank's loss made NaN): the update is skipped,
logged and counted, and enough of them in a row stop the job without touching the checkpoint."""

import pytest
import torch

from tests.pretrain_runner import MOCK_RUN, checkpoint_weights, run_pretrain

pytestmark = pytest.mark.slow
RUN = MOCK_RUN + ["--tsp-size", "2"]


def _checkpoint_at(save_dir, iteration: int, view):
    """A directory whose tracker names iteration `iteration` of save_dir."""
    view.mkdir()
    name = f"iter_{iteration:07d}"
    (view / name).symlink_to(save_dir / name)
    (view / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return view


def test_a_nonfinite_iteration_is_skipped_leaving_weights_untouched(tmp_path):
    save = tmp_path / "ckpt"
    code, losses, log = run_pretrain(2, RUN + ["--train-iters", "3", "--save", save,
                                               "--save-interval", "2",
                                               "--debug-nonfinite-loss-iterations", "3"],
                                     tmp_path / "cache")
    assert code == 0, log[-5000:]
    assert "iteration 3: non-finite loss or gradient (grad norm nan): update skipped, 1 in a row" \
        in log
    assert "number of skipped iterations:   1 | number of nan iterations:   1" in log
    # the weights saved after iteration 3 are those saved after iteration 2
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    before, after = checkpoint_weights(_checkpoint_at(save, 2, tmp_path / "at2"), save)
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
