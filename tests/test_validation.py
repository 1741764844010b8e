"""Every size TSP cannot run is refused before any process-group work, naming the flag; the
planner plans exactly the TSP group sizes the launcher accepts."""

import copy
import re

import pytest

from megatron_tsp import parallel_state as ps
from megatron_tsp.config import Qwen3Config, qwen3_preset
from megatron_tsp.layout import local_token_index
from megatron_tsp.planner.plan import plans
from megatron_tsp.size_rules import refuse, tsp_problem
from megatron_tsp.training.arguments import parse_tsp_args, prepare_args
from tests.tsp_harness import tiny_config


@pytest.mark.parametrize("changes, tsp_size, seq_length, world, flag", [
    ({"heads": 6, "groups": 6}, 4, 16, 4, "--num-attention-heads"),
    ({"heads": 12, "groups": 3}, 2, 16, 2, "--num-query-groups"),
    ({"heads": 12, "groups": 6}, 4, 16, 4, "--num-query-groups"),
    ({}, 2, 18, 2, "--seq-length"),
    ({}, 4, 12, 4, "--seq-length"),
    ({}, 2, 16, 3, "world size"),
    ({"ffn_hidden_size": 66}, 4, 16, 4, "--ffn-hidden-size"),
    ({"max_position_embeddings": 8}, 2, 16, 2, "--max-position-embeddings"),
    ({}, 0, 16, 2, "--tsp-size"),
])
def test_invalid_sizes_raise_value_error_naming_the_flag(changes, tsp_size, seq_length, world,
                                                         flag):
    config = tiny_config(**changes)
    with pytest.raises(ValueError, match=flag):
        refuse(tsp_problem(config, tsp_size, seq_length=seq_length, world_size=world))


def test_world_size_mismatch_with_pipeline_names_both_flags():
    with pytest.raises(ValueError, match="--pipeline-model-parallel-size"):
        refuse(tsp_problem(tiny_config(), 2, world_size=6, pipeline_size=2))


def test_valid_sizes_pass():
    for groups in (1, 2, 4, 8):
        assert tsp_problem(tiny_config(groups=groups), 4, seq_length=64, world_size=8,
                           pipeline_size=2) is None


def test_initialize_refuses_bad_world_size_before_starting_torch_distributed(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="--tsp-size"):
        ps.initialize_tsp(2)
    import torch.distributed as dist
    assert not dist.is_initialized()


def test_layout_refuses_indivisible_sequence():
    with pytest.raises(ValueError, match="--seq-length"):
        local_token_index(10, 0, 4)


def test_unknown_model_size_and_bad_shapes():
    with pytest.raises(ValueError, match="--model-size"):
        qwen3_preset("7b")
    with pytest.raises(ValueError, match="--num-query-groups"):
        Qwen3Config(2, 32, 8, 3, 8, 64, 100)
    with pytest.raises(ValueError, match="--hidden-size"):
        Qwen3Config(2, 0, 8, 8, 8, 64, 100)
    with pytest.raises(ValueError, match="--kv-channels"):
        Qwen3Config(2, 32, 8, 8, 7, 64, 100)


def test_vocabulary_padded_like_megatron():
    assert qwen3_preset("8b").padded_vocab_size(1) == 151936
    assert qwen3_preset("8b").padded_vocab_size(8) == 152576
    assert tiny_config(vocab_size=500).padded_vocab_size(4) == 512


# (heads, kv groups, kv channels, FFN): each breaks a different rule at some D of 6 or 8 GPUs
SHAPES = [(4, 2, 32, 192), (8, 2, 16, 192), (12, 3, 16, 192), (8, 1, 2, 200), (6, 6, 16, 190)]
MAX_POSITIONS = 4096


def _launch_check(argv, args, tsp_size, gpus, monkeypatch):
    """pretrain_qwen3.py's own check of a command line at --tsp-size D on `gpus` ranks: None or
    its ValueError's message."""
    monkeypatch.setenv("WORLD_SIZE", str(gpus))
    args = copy.deepcopy(args)
    args.tsp_size = tsp_size
    try:
        prepare_args(args, argv)
    except ValueError as error:
        return str(error)
    return None


def test_the_planner_plans_exactly_what_the_launcher_accepts(monkeypatch):
    """For every shape, sequence length and GPU count of the grid, the TSP group sizes among the
    planner's layouts (one device: D = 1) are those pretrain_qwen3.py accepts, and every refusal
    names a flag of the command line (or the world size)."""
    outcomes = set()
    for heads, groups, kv_channels, ffn in SHAPES:
        for S in (48, 40, 2 * MAX_POSITIONS):
            argv = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", heads,
                    "--num-query-groups", groups, "--kv-channels", kv_channels,
                    "--ffn-hidden-size", ffn, "--max-position-embeddings", MAX_POSITIONS,
                    "--seq-length", S, "--tsp-size", 1, "--mock-data", "--micro-batch-size",
                    "1", "--train-iters", "2", "--lr", "1e-3"]
            argv = list(map(str, argv))
            parsed = parse_tsp_args(argv)  # --tsp-size set per D below: parsing is the slow part
            cfg = Qwen3Config(2, 64, heads, groups, kv_channels, ffn, 4096,
                              max_position_embeddings=MAX_POSITIONS)
            for gpus in (6, 8):
                rows = plans(cfg, S, gpus, "h100")
                planned = {p.layout.group_size for p in rows
                           if p.layout.scheme in ("tsp", "single")}
                for D in (d for d in range(1, gpus + 1) if gpus % d == 0):
                    refusal = _launch_check(argv, parsed, D, gpus, monkeypatch)
                    case = (heads, groups, kv_channels, ffn, S, gpus, D, refusal)
                    assert (refusal is None) == (D in planned), case
                    if refusal is not None:
                        named = set(re.findall(r"--[a-z-]+", refusal))
                        assert named and named <= set(argv) or "world size" in refusal, case
                    outcomes.add(refusal is None)
    assert outcomes == {True, False}
