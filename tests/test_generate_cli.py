"""generate_qwen3.py: every user error named by its flag or file before any work starts, and
(slow) a torchrun run at --tsp-size 4 of a prompt whose KV cache alone exceeds a --max-memory-gb
budget that --tsp-size 1 is refused under, its greedy tokens equal to transformers'.

The checkpoint is a random transformers Qwen3 with the embedded tokenizer's vocabulary,
imported with the project's converter (the tokenizer goes to <checkpoint>/tokenizer).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from megatron_tsp.spawn import free_port
from tests.dist import run_distributed
from tests.hf_models import HF_SHAPE, randomize
from tests.test_generate import _import

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "megatron_tsp" / "data" / "tokenizer"
LONG, NEW, BUDGET_GB = 1200, 8, 0.001


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate_cli")
    torch.manual_seed(0)
    config = transformers.Qwen3Config(**{**HF_SHAPE, "vocab_size": 4096}, rope_theta=1e6)
    model = randomize(transformers.Qwen3ForCausalLM(config).eval())
    model.save_pretrained(root / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, root / "hf" / name)
    run_distributed(_import, 1, root / "hf", root / "ckpt")
    return model, root


def _prepare(*argv, world_size=1):
    from megatron_tsp.inference.arguments import parse_generate_args, prepare_generate_args
    argv = [str(a) for a in argv]
    saved = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = str(world_size)
    try:
        return prepare_generate_args(parse_generate_args(argv), argv)
    finally:
        if saved is None:
            del os.environ["WORLD_SIZE"]
        else:
            os.environ["WORLD_SIZE"] = saved


def _long_prompt(root, length=LONG):
    path = root / f"long{length}.jsonl"
    ids = torch.randint(1, 4096, (length,), generator=torch.Generator().manual_seed(5)).tolist()
    path.write_text(json.dumps({"prompt_ids": ids}) + "\n" + json.dumps({"prompt": "O, woe"}))
    return path


@pytest.mark.parametrize("extra, message", [
    (["--prompt", ""], "--prompt: the prompt is empty"),
    ([], "give exactly one of --prompt, --prompt-file and --input"),
    (["--prompt", "a", "--max-position-embeddings", "8", "--max-new-tokens", "8"],
     "exceed --max-position-embeddings (8)"),
    (["--prompt", "a", "--tokenizer-model", "/nonexistent/tok"],
     "--tokenizer-model /nonexistent/tok: no such file or directory"),
    (["--prompt", "a", "--num-layers", "3"], "--num-layers: the checkpoint in --load"),
    (["--prompt", "a", "--top-k", "5"], "--top-k and --top-p choose what to sample from"),
    (["--prompt-file", "/nonexistent/p.txt"], "--prompt-file /nonexistent/p.txt: no such file"),
])
def test_user_errors_name_the_flag(imported, extra, message):
    _, root = imported
    with pytest.raises(ValueError) as error:
        _prepare("--load", root / "ckpt", "--use-checkpoint-args", *extra)
    assert message in str(error.value), str(error.value)


def test_a_checkpoint_of_another_shape_is_refused(imported):
    """Without --use-checkpoint-args the shape is --model-size's (tiny): FFN 192, not 128."""
    _, root = imported
    with pytest.raises(ValueError, match="--ffn-hidden-size: the checkpoint in --load .* has "
                                         "128, the arguments give 192"):
        _prepare("--load", root / "ckpt", "--prompt", "a")


def test_bad_input_lines_name_the_line(imported):
    _, root = imported
    path = root / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt_ids": []}\n')
    with pytest.raises(ValueError, match=f"--input {path}: line 2: the prompt is empty"):
        _prepare("--load", root / "ckpt", "--use-checkpoint-args", "--input", path)
    path.write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match='line 1: needs exactly one of "prompt"'):
        _prepare("--load", root / "ckpt", "--use-checkpoint-args", "--input", path)


def test_memory_budget_refuses_one_rank_and_admits_four(imported):
    """The long prompt's KV cache alone is over the budget at D = 1; at D = 4 a rank's weight
    shards and cache slice fit."""
    from megatron_tsp.planner.inference import bytes_per_cached_token
    _, root = imported
    argv = ["--load", root / "ckpt", "--use-checkpoint-args", "--input", _long_prompt(root),
            "--max-new-tokens", NEW, "--max-memory-gb", BUDGET_GB]
    run = _prepare(*argv, "--tsp-size", 4, world_size=4)
    one_device_cache = (LONG + NEW - 1) * bytes_per_cached_token(run.config, 4)
    assert one_device_cache > BUDGET_GB * 1e9
    with pytest.raises(ValueError, match=r"--max-memory-gb 0.001: a rank needs"):
        _prepare(*argv)


@pytest.mark.slow
def test_torchrun_at_four_ranks_under_the_budget_equals_transformers(imported):
    hf, root = imported
    prompts = _long_prompt(root)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4",
               "--master-port", str(free_port()), str(ROOT / "generate_qwen3.py"),
               "--tsp-size", "4", "--load", str(root / "ckpt"), "--use-checkpoint-args",
               "--input", str(prompts), "--output", str(root / "out.jsonl"),
               "--max-new-tokens", str(NEW), "--max-memory-gb", str(BUDGET_GB)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "time to first token" in result.stdout and "KV-cache bytes per rank" in result.stdout
    lines = [json.loads(line) for line in (root / "out.jsonl").read_text().splitlines()]
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "ckpt" / "tokenizer")
    records = [json.loads(line) for line in prompts.read_text().splitlines()]
    for record, line in zip(records, lines):
        ids = record.get("prompt_ids") or tokenizer(record["prompt"],
                                                    add_special_tokens=False)["input_ids"]
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                          max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                          eos_token_id=tokenizer.eos_token_id)
        assert line["tokens"] == out[0, len(ids):].tolist()
        assert line["text"] == tokenizer.decode(line["tokens"], skip_special_tokens=True)
    assert lines[1]["prompt"] == "O, woe"
