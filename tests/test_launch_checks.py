"""The launch checks of issue 11 accept what Megatron runs correctly: a split that trains, the
resume idiom --save X --load X before X exists, an existing empty --load directory, a --save
whose missing parents Megatron creates. The refusals are in tests/test_launch_errors.py."""

import os

import pytest

from tests.launch_inputs import prepared_args

MOCK = ["--mock-data", "--micro-batch-size", "1", "--train-iters", "2", "--lr", "1e-3",
        "--save-interval", "1"]


@pytest.fixture(autouse=True)
def _one_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")


def test_checkpoint_paths_megatron_handles_are_accepted_and_nothing_is_created(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    prepared_args([*MOCK, "--save", tmp_path / "run", "--load", tmp_path / "run"])  # resume idiom
    prepared_args([*MOCK, "--save", f"{tmp_path / 'run'}/", "--load", tmp_path / "run"])
    prepared_args([*MOCK, "--save", tmp_path / "a" / "b" / "c", "--load", empty])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]


def test_valid_splits_are_accepted():
    assert prepared_args(["--split", "969, 30, 1", *MOCK[1:]]).split == "969, 30, 1"
    prepared_args(["--split", "100", *MOCK[1:]])
    # mock data ignores --split (Megatron splits it 1,1,1): a zero train weight is harmless
    prepared_args(["--split", "0,0,100", *MOCK])


def test_split_with_zero_train_weight_is_refused_only_when_it_decides_training():
    with pytest.raises(ValueError, match="--split 0,1,0: the train weight is 0"):
        prepared_args(["--split", "0,1,0", *MOCK[1:]])


@pytest.mark.parametrize("flags", [["--norm-epsilon", "nan"], ["--norm-epsilon", "inf"],
                                   ["--rotary-base", "1"]])
def test_degenerate_numerics_are_refused(flags):
    with pytest.raises(ValueError, match=flags[0]):
        prepared_args([*flags, *MOCK])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_save_under_a_read_only_directory_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="--save .* not writable"):
            prepared_args([*MOCK, "--save", locked / "ckpt"])
    finally:
        locked.chmod(0o700)
