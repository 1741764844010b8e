"""Every size TSP cannot run is refused before any process-group work, naming the flag."""


import pytest

from megatron_tsp import parallel_state as ps
from megatron_tsp.layout import local_token_index
from megatron_tsp.config import Qwen3Config, qwen3_preset
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
        ps.validate_tsp_config(config, tsp_size, seq_length=seq_length, world_size=world)


def test_world_size_mismatch_with_pipeline_names_both_flags():
    with pytest.raises(ValueError, match="--pipeline-model-parallel-size"):
        ps.validate_tsp_config(tiny_config(), 2, world_size=6, pipeline_size=2)


def test_valid_sizes_pass():
    for groups in (1, 2, 4, 8):
        ps.validate_tsp_config(tiny_config(groups=groups), 4, seq_length=64, world_size=8,
                               pipeline_size=2)


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
    with pytest.raises(ValueError, match="num_query_groups"):
        Qwen3Config(2, 32, 8, 3, 8, 64, 100)
    with pytest.raises(ValueError, match="hidden_size"):
        Qwen3Config(2, 0, 8, 8, 8, 64, 100)


def test_vocabulary_padded_like_megatron():
    assert qwen3_preset("8b").padded_vocab_size(1) == 151936
    assert qwen3_preset("8b").padded_vocab_size(8) == 152576
    assert tiny_config(vocab_size=500).padded_vocab_size(4) == 512
