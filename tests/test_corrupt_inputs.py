"""Corrupt inputs are reported, not trusted: a cut or mismatched dataset file, a cut or missing
checkpoint shard and a checkpoint tracker that is not text stop the real entry points at launch,
naming the file, before anything is read into the model or written."""

import os
import shutil

import pytest

from tests.launch_cases import run_cases
from tests.launch_inputs import write_dataset
from tests.pretrain_runner import convert
from tests.small_checkpoint import write_checkpoint

MOCK = ["--micro-batch-size", "1", "--train-iters", "2", "--lr", "1e-3", "--save-interval", "1"]


def _cut(path, nbytes):
    os.truncate(path, os.path.getsize(path) - nbytes)


@pytest.fixture()
def datasets(tmp_path):
    """prefix -> what is wrong with it; `good` is whole (and loads in Megatron's reader)."""
    root = tmp_path / "data"
    root.mkdir()
    for name in ("good", "short_bin", "short_idx", "not_an_index", "swapped", "no_documents"):
        write_dataset(root / name, documents=5, seed=0)
    write_dataset(root / "other", documents=7, seed=1)
    _cut(root / "short_bin.bin", 2)
    _cut(root / "short_idx.idx", 8)
    (root / "not_an_index.idx").write_bytes(b"this is not an index")
    shutil.copy(root / "other.bin", root / "swapped.bin")
    # a header that says "no document index" with a file length to match
    index = bytearray((root / "no_documents.idx").read_bytes())
    documents = int.from_bytes(index[26:34], "little")
    index[26:34] = (0).to_bytes(8, "little")
    (root / "no_documents.idx").write_bytes(bytes(index[:len(index) - 8 * documents]))
    return root


def test_corrupt_datasets_are_named_at_launch(tmp_path, datasets):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    assert len(IndexedDataset(str(datasets / "good"))) == 5
    expected = {"short_bin": "short_bin.bin is corrupt: ", "short_idx": "short_idx.idx is corrupt",
                "not_an_index": "not_an_index.idx is corrupt: not a Megatron index file",
                "swapped": "swapped.bin is corrupt: ",
                "no_documents": "no_documents.idx is corrupt: 0 document indices"}
    save = ["--save", tmp_path / "ckpt"]
    cases = [(["--data-path", datasets / name, *MOCK, *save], 1) for name in expected]
    cases.append((["--data-path", "0.5", datasets / "good", "0.5", datasets / "short_bin",
                   *MOCK, *save], 1))
    expected["blend"] = "short_bin.bin is corrupt: "
    for (name, text), outcome in zip(expected.items(), run_cases(cases, tmp_path,
                                                                 tmp_path / "cache")):
        assert outcome["code"] != 0, (name, outcome)
        assert "--data-path" in outcome["stderr"] and text in outcome["stderr"], (name, outcome)
        assert outcome["seconds"] < 10
    assert not (tmp_path / "ckpt").exists()


@pytest.fixture(scope="module")
def broken_checkpoints(tmp_path_factory):
    """{name: (checkpoint, the file its error must name)}: one shard cut, one missing."""
    broken, root = {}, tmp_path_factory.mktemp("checkpoints")
    for name in ("cut", "missing"):
        iteration = write_checkpoint(root / name)
        shards = sorted(iteration.glob("*.distcp"))
        assert len(shards) == 2
        if name == "cut":
            _cut(shards[1], 100)
        else:
            shards[1].unlink()
        broken[name] = (root / name, shards[1])
    return broken


def test_a_cut_or_missing_checkpoint_shard_is_named_at_launch(tmp_path, broken_checkpoints):
    cases = [(["--mock-data", "--load", checkpoint, *MOCK], 1)
             for checkpoint, _ in broken_checkpoints.values()]
    outcomes = run_cases(cases, tmp_path, tmp_path / "cache")
    for (name, (checkpoint, shard)), outcome in zip(broken_checkpoints.items(), outcomes):
        assert outcome["code"] != 0
        message = "is truncated: " if name == "cut" else "is missing"
        assert f"--load {checkpoint}: {shard} {message}" in outcome["stderr"], outcome
        assert outcome["seconds"] < 10


def test_export_of_a_cut_checkpoint_fails_naming_the_shard(tmp_path, broken_checkpoints):
    checkpoint, shard = broken_checkpoints["cut"]
    result = convert("export-hf", "--load", checkpoint, "--hf-path", tmp_path / "hf",
                     check=False, timeout=120)
    assert result.returncode == 2
    assert f"{shard} is truncated: " in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "hf").exists()


def test_a_tracker_that_is_not_utf8_is_named_at_launch_and_by_export(tmp_path):
    checkpoint = tmp_path / "ckpt"
    (checkpoint / "iter_0000001").mkdir(parents=True)
    tracker = checkpoint / "latest_checkpointed_iteration.txt"
    tracker.write_bytes(b"\xff\xfe1\n")
    expected = f"--load {checkpoint}: {tracker}: not UTF-8 text"
    [outcome] = run_cases([(["--mock-data", "--load", checkpoint, *MOCK], 1)], tmp_path,
                          tmp_path / "cache")
    assert outcome["code"] == 2 and expected in outcome["stderr"], outcome
    result = convert("export-hf", "--load", checkpoint, "--hf-path", tmp_path / "hf",
                     check=False, timeout=120)
    assert result.returncode == 2 and expected in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "hf").exists()
    assert sorted(p.name for p in checkpoint.iterdir()) == ["iter_0000001", tracker.name]
