"""tools/convert_checkpoint.py: Hugging Face <-> torch_dist, proven by outputs, not by loading.

A random transformers Qwen3 (GQA, head_dim != hidden / heads; tied and untied) goes through the
real CLI; the exported tensors are bit-identical, and the imported checkpoint gives the loss
transformers gives at --tsp-size 1, 2 and 4. Without --dtype both directions keep the source's
dtype, so the round trip is lossless in fp32 and in bf16. Neither direction writes into a
non-empty directory unless told to replace it, and then nothing of the old one remains, or all
of it if the conversion fails.
"""

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from megatron_tsp import parallel_state as ps
from megatron_tsp.conversion.convert import DTYPES
from tests.dist import run_distributed
from tests.pretrain_runner import convert, script_module
from tests.hf_models import hf_checkpoint_dict, hf_model

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "megatron_tsp" / "data" / "tokenizer"
SEQ, BATCH = 32, 2


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def hf_and_checkpoint(request, tmp_path_factory):
    """A saved random fp32 HF Qwen3 (sharded), its import with no --dtype (an fp32 torch_dist
    checkpoint, the source's dtype), and what the import printed."""
    root = tmp_path_factory.mktemp("tied" if request.param else "untied")
    model = hf_model(request.param)
    model.save_pretrained(root / "hf", max_shard_size="200KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (root / "hf" / name).write_bytes((TOKENIZER / name).read_bytes())
    imported = convert("import-hf", "--hf-path", root / "hf", "--save", root / "ckpt")
    return model, root, imported.stdout


def _assert_exported(directory: Path, model) -> None:
    """The export in `directory` holds exactly the model's tensors, bit for bit and dtype."""
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    exported = {}
    for file in set(index["weight_map"].values()):
        exported.update(load_file(directory / file))
    expected = hf_checkpoint_dict(model)
    assert exported.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(exported[name], tensor), (name, exported[name].dtype, tensor.dtype)


def _lines(output: str, start: str) -> list:
    return [line for line in output.splitlines() if line.startswith(start)]


def test_import_then_export_is_bit_identical(hf_and_checkpoint):
    """No --dtype either way: fp32 in, fp32 out, bit for bit."""
    model, root, imported = hf_and_checkpoint
    result = convert("export-hf", "--load", root / "ckpt", "--hf-path", root / "out", "--verify")
    line = next(l for l in result.stdout.splitlines() if l.startswith("verify:"))
    assert float(line.rsplit(" ", 1)[1]) < 1e-4, line
    _assert_exported(root / "out", model)
    _assert_dtype_kept(imported, result.stdout, root, "fp32", "float32",
                       untied=not model.config.tie_word_embeddings)
    assert (root / "out" / "tokenizer.json").is_file()
    from transformers import AutoModelForCausalLM
    reloaded = AutoModelForCausalLM.from_pretrained(root / "out", dtype=torch.float32)
    assert reloaded.config.head_dim == model.config.head_dim
    assert reloaded.config.tie_word_embeddings == model.config.tie_word_embeddings


def _assert_dtype_kept(imported: str, exported: str, root: Path, dtype: str, hf_name: str,
                       untied: bool) -> None:
    """Both directions said they kept the source's dtype, and the export's config.json says it."""
    assert _lines(imported, "importing") == [
        f"importing {root / 'hf'} (Qwen3, 2 layers, hidden 64) at --tsp-size 1 as {dtype} "
        "(the source's dtype)"]
    assert _lines(exported, "exporting") == [
        f"exporting {root / 'ckpt'} as {dtype} (the checkpoint's dtype)"]
    assert json.loads((root / "out" / "config.json").read_text())["dtype"] == hf_name
    if untied:  # the progress counts reach their totals: 2 layers of 8 tensors (Megatron) or
        # 11 (HF), plus the embedding, final norm and output layer
        assert re.findall(r"^  \[(\d+/\d+)\] ", imported, re.M)[-1] == "19/19"
        assert re.findall(r"^  \[(\d+/\d+)\] ", exported, re.M)[-1] == "25/25"


def test_without_dtype_a_bf16_round_trip_stays_bf16(tmp_path):
    model = hf_model(tie=False).to(DTYPES["bf16"])
    model.save_pretrained(tmp_path / "hf")
    imported = convert("import-hf", "--hf-path", tmp_path / "hf", "--save", tmp_path / "ckpt")
    exported = convert("export-hf", "--load", tmp_path / "ckpt", "--hf-path", tmp_path / "out")
    _assert_exported(tmp_path / "out", model)
    _assert_dtype_kept(imported.stdout, exported.stdout, tmp_path, "bf16", "bfloat16",
                       untied=True)


def test_a_source_whose_config_and_tensors_disagree_needs_dtype(tmp_path, capsys):
    """config.json says bfloat16 and the tensors are fp32: either choice would lose something
    (precision, or the dtype the model is meant to run in), so it is the user's."""
    from megatron_tsp.checkpoint import checkpoint_args
    hf_model(tie=False).save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(config, dtype="bfloat16")))
    cli = script_module("tools/convert_checkpoint.py")  # the refusal precedes any work
    with pytest.raises(SystemExit) as exit_:
        cli.main(["import-hf", "--hf-path", str(tmp_path / "hf"), "--save", str(tmp_path / "no")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-2000:]
    assert (f"error: {tmp_path / 'hf' / 'model.safetensors'}: F32 tensors, but "
            f"{tmp_path / 'hf' / 'config.json'} has torch.bfloat16; --dtype chooses") in err
    assert not (tmp_path / "no").exists()
    imported = convert("import-hf", "--hf-path", tmp_path / "hf", "--save", tmp_path / "ckpt",
                       "--dtype", "fp16")
    assert _lines(imported.stdout, "importing")[0].endswith(" as fp16 (--dtype)")
    assert checkpoint_args(str(tmp_path / "ckpt")).fp16


def _loss_from_checkpoint(tsp_size, checkpoint, tokens, labels):
    from megatron_tsp.conversion.convert import load_model
    from megatron_tsp.layers.vocab import masked_token_mean
    from megatron_tsp.layout import scatter_to_local
    model = load_model(checkpoint, tsp_size)
    positions = torch.arange(SEQ).expand(BATCH, SEQ)
    ids, local_labels, local_positions = (scatter_to_local(t, 1)
                                          for t in (tokens, labels, positions))
    with torch.no_grad():
        loss = model(ids, local_positions, labels=local_labels)
        _, mean = masked_token_mean(loss, torch.ones_like(loss))
    ps.destroy_tsp()
    return mean.item()


def test_imported_checkpoint_gives_transformers_loss_at_every_tsp_size(hf_and_checkpoint):
    model, root, _ = hf_and_checkpoint
    if model.config.tie_word_embeddings:
        pytest.skip("the untied model covers this; tied vs untied is covered by the round trip")
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(1))
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        expected = F.cross_entropy(model(input_ids=inputs).logits.reshape(-1, vocab),
                                   labels.reshape(-1)).item()
    for tsp_size in (1, 2, 4):
        loss = run_distributed(_loss_from_checkpoint, tsp_size, tsp_size, str(root / "ckpt"),
                               inputs, labels)[0]
        assert abs(loss - expected) <= 1e-5 * expected, (tsp_size, loss, expected)


def test_a_model_that_is_not_qwen3_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    result = convert("import-hf", "--hf-path", tmp_path, "--save", tmp_path / "out",
                     check=False)
    assert result.returncode != 0 and "llama" in result.stderr
    assert not (tmp_path / "out").exists()


def _damaged_copy(source: Path, target: Path, damage: str) -> Path:
    target.mkdir()
    for path in source.iterdir():
        target.joinpath(path.name).write_bytes(path.read_bytes())
    shard = sorted(target.glob("model-*.safetensors"))[1]
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    else:
        shard.unlink()
    return shard


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_a_damaged_shard_is_named_before_anything_is_read(hf_and_checkpoint, tmp_path, damage):
    from megatron_tsp.conversion.hf_io import HFCheckpointReader
    _, root, _ = hf_and_checkpoint
    shard = _damaged_copy(root / "hf", tmp_path / "hf", damage)
    with pytest.raises(ValueError, match=shard.name):
        HFCheckpointReader(str(tmp_path / "hf"))


def test_the_cli_reports_a_truncated_shard_and_writes_nothing(hf_and_checkpoint, tmp_path):
    model, root, _ = hf_and_checkpoint
    if model.config.tie_word_embeddings:
        pytest.skip("one CLI run is enough; the reader test covers both models")
    shard = _damaged_copy(root / "hf", tmp_path / "hf", "truncate")
    result = convert("import-hf", "--hf-path", tmp_path / "hf", "--save", tmp_path / "out",
                     check=False)
    assert result.returncode != 0 and shard.name in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_loading_a_checkpoint_of_another_shape_names_both_values(hf_and_checkpoint,
                                                                 monkeypatch):
    from megatron_tsp.training.arguments import parse_tsp_args, prepare_args
    _, root, _ = hf_and_checkpoint
    monkeypatch.setenv("WORLD_SIZE", "1")
    argv = ["--mock-data", "--num-layers", "3", "--hidden-size", "64", "--num-attention-heads",
            "4", "--num-query-groups", "2", "--kv-channels", "32", "--ffn-hidden-size", "128",
            "--load", str(root / "ckpt")]
    with pytest.raises(ValueError, match=r"--num-layers: the checkpoint .* has 2, the arguments "
                                         r"give 3"):
        prepare_args(parse_tsp_args(argv), argv)


def _training_run(directory: Path) -> Path:
    """A directory as a training run leaves it: the tracker naming iteration 7, its checkpoint."""
    (directory / "iter_0000007").mkdir(parents=True)
    (directory / "iter_0000007" / "common.pt").write_bytes(b"trained weights")
    (directory / "latest_checkpointed_iteration.txt").write_text("7")
    return directory


def _stale_hf(directory: Path) -> Path:
    """An earlier export of a larger model: more shards than the new export writes."""
    directory.mkdir()
    (directory / "config.json").write_text('{"num_hidden_layers": 64}')
    (directory / "model-00009-of-00009.safetensors").write_bytes(b"stale shard")
    return directory


def _files(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}


def test_a_non_empty_target_is_refused_before_any_work(hf_and_checkpoint, tmp_path,
                                                       capsys):
    model, root, _ = hf_and_checkpoint
    if model.config.tie_word_embeddings:
        pytest.skip("the refusal does not depend on the model")
    run, stale = _training_run(tmp_path / "run"), _stale_hf(tmp_path / "hf")
    before = _files(run), _files(stale)
    cli = script_module("tools/convert_checkpoint.py")  # the refusal precedes any work
    for argv, flag, target in (
            (["import-hf", "--hf-path", root / "hf", "--save", run], "--save", run),
            (["export-hf", "--load", root / "ckpt", "--hf-path", stale], "--hf-path", stale)):
        with pytest.raises(SystemExit) as exit_:
            cli.main(list(map(str, argv)))
        out, err = capsys.readouterr()
        assert exit_.value.code == 2, err[-2000:]
        assert f"convert_checkpoint.py: error: {flag} {target}: not empty" in err
        assert "--overwrite" in err
        assert "importing" not in out and "exporting" not in out
    assert (_files(run), _files(stale)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]


def test_overwrite_replaces_the_whole_directory(hf_and_checkpoint, tmp_path):
    model, root, _ = hf_and_checkpoint
    if model.config.tie_word_embeddings:
        pytest.skip("overwriting does not depend on the model")
    run, stale = _training_run(tmp_path / "run"), _stale_hf(tmp_path / "hf")
    convert("import-hf", "--hf-path", root / "hf", "--save", run, "--dtype", "fp32",
            "--overwrite")
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "release"
    assert sorted(p.name for p in run.iterdir()) == [
        "latest_checkpointed_iteration.txt", "release", "tokenizer"]
    convert("export-hf", "--load", run, "--hf-path", stale, "--dtype", "fp32", "--overwrite")
    index = json.loads((stale / "model.safetensors.index.json").read_text())
    shards = {p.name for p in stale.glob("*.safetensors")}
    assert shards == set(index["weight_map"].values()), shards
    assert json.loads((stale / "config.json").read_text())["num_hidden_layers"] == (
        model.config.num_hidden_layers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]


def test_a_failed_overwrite_leaves_the_old_directory_as_it_was(tmp_path):
    from megatron_tsp.conversion.output_dir import output_directory
    stale = _stale_hf(tmp_path / "hf")
    before = _files(stale)
    with pytest.raises(OSError, match="disk full"):
        with output_directory(str(stale), "--hf-path", True, "") as written:
            written.mkdir()
            (written / "model-00001-of-00002.safetensors").write_bytes(b"half an export")
            raise OSError("disk full")
    assert _files(stale) == before
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]
