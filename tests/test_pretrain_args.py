"""pretrain_qwen3.py's arguments: --model-size and the defaults it fills, and refusals that leave
an existing checkpoint untouched."""

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launch_inputs import prepared_args

ROOT = Path(__file__).resolve().parents[1]


def test_model_size_fills_shape_and_explicit_flags_win(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    args = prepared_args(["--model-size", "8b", "--tsp-size", "8", "--num-layers", "4",
                      "--seq-length", "131072", "--max-position-embeddings", "131072",
                      "--mock-data"])
    assert (args.hidden_size, args.num_attention_heads, args.num_query_groups,
            args.kv_channels, args.ffn_hidden_size) == (4096, 32, 8, 128, 12288)
    assert args.num_layers == 4
    assert args.untie_embeddings_and_output_weights
    assert args.tensor_model_parallel_size == 8
    assert args.qk_layernorm and args.swiglu and args.normalization == "RMSNorm"
    assert args.rotary_base == 1_000_000 and args.layernorm_epsilon == 1e-6


def test_no_data_flag_means_the_embedded_corpus(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = prepared_args(["--tsp-size", "2"])
    assert args.tokenizer_type == "HuggingFaceTokenizer"
    assert Path(args.tokenizer_model, "tokenizer.json").is_file()
    assert args.data_path[0].endswith("shakespeare_tragedies_text_document")


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        h.update(str(path.relative_to(directory)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


# the full table of bad launches is tests/test_launch_errors.py; these check the checkpoint
@pytest.mark.parametrize("argv, world, flag", [
    (["--tsp-size", "2", "--seq-length", "66"], "2", "--seq-length"),
    (["--tsp-size", "2"], "3", "world size"),
])
def test_entry_point_exits_fast_and_leaves_checkpoint_untouched(tmp_path, argv, world, flag):
    checkpoint = tmp_path / "ckpt"
    (checkpoint / "iter_0000003").mkdir(parents=True)
    (checkpoint / "latest_checkpointed_iteration.txt").write_text("3")
    (checkpoint / "iter_0000003" / "common.pt").write_bytes(b"weights")
    before = _digest(checkpoint)
    env = dict(os.environ, WORLD_SIZE=world, RANK="0", LOCAL_RANK="0")
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "pretrain_qwen3.py"), *argv, "--save", str(checkpoint),
         "--load", str(checkpoint), "--micro-batch-size", "1", "--train-iters", "2",
         "--lr", "1e-3"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert time.monotonic() - start < 60  # imports dominate; the error precedes any group
    assert flag in result.stderr, result.stderr[-2000:]
    assert _digest(checkpoint) == before


def test_a_checkpoints_vocabulary_is_kept_and_a_larger_tokenizer_refused(tmp_path):
    """A loaded checkpoint's vocabulary is the model's whatever the tokenizer's size (a released
    Qwen3 has 151,936 rows for a 151,669-token tokenizer, and transformers scores every row), with
    and without --finetune (and --pretrained-checkpoint, which implies it): Megatron loads
    vocabulary tables across paddings, so the tokenizer would otherwise decide silently how many
    rows are scored (issue 10, defect 7). A tokenizer with more entries than the checkpoint has
    rows is refused. The --finetune launch runs for real; the three ways of naming the
    checkpoint go through the same check, at model build."""
    import argparse
    from megatron_tsp.training.step import model_vocabulary
    from tests.pretrain_runner import MOCK_RUN, run_pretrain
    checkpoint, cache = tmp_path / "ckpt", tmp_path / "cache"
    code, _, output = run_pretrain(1, [*MOCK_RUN, "--train-iters", "1", "--save", checkpoint,
                                       "--save-interval", "1"], cache)
    assert code == 0, output[-3000:]
    code, losses, output = run_pretrain(1, [*MOCK_RUN, "--train-iters", "2", "--vocab-size",
                                            "5000", "--load", checkpoint, "--finetune"], cache)
    assert code != 0 and not losses, (losses, output[-3000:])
    assert "the checkpoint's vocabulary has" in output, output[-3000:]
    saved = 4096  # the tiny preset's vocabulary, which MOCK_RUN's NullTokenizer keeps
    empty = tmp_path / "empty"
    empty.mkdir()
    for load, finetune, pretrained, flag in [(checkpoint, False, None, "--load"),
                                             (checkpoint, True, None, "--load"),
                                             (empty, True, checkpoint, "--pretrained-checkpoint")]:
        args = argparse.Namespace(load=str(load), finetune=finetune,
                                  pretrained_checkpoint=pretrained and str(pretrained))
        expected = (f"{flag} {checkpoint}: the checkpoint's vocabulary has {saved} entries, "
                    "the tokenizer has 5000")
        with pytest.raises(ValueError, match="^" + re.escape(expected)):
            model_vocabulary(args, 5000)
        assert model_vocabulary(args, saved) == saved
        assert model_vocabulary(args, 4000) == saved
    without = argparse.Namespace(load=str(empty), finetune=False, pretrained_checkpoint=None)
    assert model_vocabulary(without, 4000) == 4000


@pytest.mark.parametrize("script", ["pretrain_qwen3.py", "generate_qwen3.py"])
def test_help_prints(script):
    """--help lists the flags (it raised on a bare '%' in one of megatron-core's help texts)."""
    import subprocess
    import sys
    from tests.pretrain_runner import ROOT
    result = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--tsp-size" in result.stdout and "--moe-paged-stash-buffer-size-factor-cuda" in \
        result.stdout, result.stdout[-2000:]
