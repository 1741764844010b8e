"""Data a run cannot train on stops it with a message naming the flag, the file and the document
(issue 11): a split that holds no document (Megatron spun forever building its indices), and
token ids outside the tokenizer's vocabulary (trained on silently)."""

import pytest

from tests.launch_cases import run_cases
from tests.launch_inputs import prepared_args, write_dataset
from tests.pretrain_runner import run_pretrain

TRAIN = ["--micro-batch-size", "1", "--train-iters", "2", "--lr", "1e-3", "--save-interval", "1",
         "--tokenizer-type", "NullTokenizer", "--vocab-size", "100", "--seq-length", "64"]


def test_a_split_that_gets_no_document_is_refused_at_launch(tmp_path):
    """Five documents: Megatron's default split 969,30,1 gives the validation and test splits
    none, and its GPTDataset looped forever ("Build and save the GPTDataset test indices") even
    with --eval-iters 0; 95,5,0 gives the validation split none."""
    small = write_dataset(tmp_path / "small", documents=5, high=100)
    cases = [(["--data-path", small, *TRAIN], 1),
             (["--data-path", small, "--eval-iters", "0", *TRAIN], 1),
             (["--data-path", small, "--split", "95,5,0", *TRAIN], 1)]
    outcomes = run_cases(cases, tmp_path, tmp_path / "cache")
    expected = ["validation and test splits of --data-path {} get none",
                "validation and test splits of --data-path {} get none",
                "validation split of --data-path {} gets none"]
    for (argv, _), text, outcome in zip(cases, expected, outcomes):
        assert outcome["code"] == 2, (argv, outcome)
        assert f"{text.format(small)} of its 5 documents" in outcome["stderr"], outcome["stderr"]
        assert outcome["seconds"] < 10, outcome


def test_splits_that_get_documents_are_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    small = write_dataset(tmp_path / "small", documents=5, high=100)
    for split in ("100,0,0", "3,2,0", "1,1,1"):
        assert prepared_args(["--data-path", small, "--split", split, *TRAIN]).split == split
    enough = write_dataset(tmp_path / "enough", documents=700, high=100)
    prepared_args(["--data-path", enough, *TRAIN])  # Megatron's default split, 969,30,1


@pytest.mark.slow
def test_a_token_id_outside_the_vocabulary_stops_the_run_naming_the_document(tmp_path):
    """--vocab-size 100 on data whose document 13 holds the id 4000: at tsp 1 it trained on with
    a wrong loss and exit code 0."""
    data = write_dataset(tmp_path / "data", documents=20, high=100, bad_document=13)
    code, _, output = run_pretrain(
        1, ["--data-path", data, "--split", "100,0,0", "--eval-iters", "0", "--global-batch-size",
            "4", "--micro-batch-size", "4", "--train-iters", "10", "--lr", "1e-3",
            "--tokenizer-type", "NullTokenizer", "--vocab-size", "100", "--seq-length", "64"],
        tmp_path / "cache", timeout=120)
    assert code != 0, output[-3000:]
    assert (f"--data-path {data}: document 13 holds token id 4000, outside the tokenizer's "
            "vocabulary of 100") in output, output[-3000:]
