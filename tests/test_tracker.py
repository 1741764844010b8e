"""Megatron's checkpoint tracker is replaced whole: a job killed while it is being written leaves
the previous iteration in it, never an empty file."""

import pytest

import megatron_tsp  # noqa: F401  (megatron-core adaptations, the atomic tracker among them)


def _tracker(tmp_path):
    tracker = tmp_path / "latest_checkpointed_iteration.txt"
    tracker.write_text("4")
    return tracker


def test_the_tracker_keeps_the_previous_iteration_until_the_new_one_is_whole(tmp_path):
    import megatron.training.checkpointing as checkpointing
    tracker = _tracker(tmp_path)
    with checkpointing.maybe_msc.open(str(tracker), "w") as stream:  # save_checkpoint's call
        stream.write("8")
        stream.flush()
        assert tracker.read_text() == "4"
    assert tracker.read_text() == "8"
    assert [p.name for p in tmp_path.iterdir()] == [tracker.name]


def test_a_write_that_fails_leaves_the_previous_tracker(tmp_path):
    import megatron.training.checkpointing as checkpointing
    tracker = _tracker(tmp_path)
    with pytest.raises(OSError):
        with checkpointing.maybe_msc.open(str(tracker), "w") as stream:
            stream.write("8")
            raise OSError("disk full")
    assert tracker.read_text() == "4"
    assert [p.name for p in tmp_path.iterdir()] == [tracker.name]
