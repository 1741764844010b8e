"""TSP attention is causal by construction: no S x S attention mask is built by the dataset, moved
to the device or broadcast to the TSP ranks (at 128K tokens one mask per sample is 16 GiB of
bools). Issue 10, defect 4."""

import sys

import torch

from megatron_tsp.training.arguments import add_tsp_arguments, prepare_args

ARGV = ["--mock-data", "--seq-length", "64", "--micro-batch-size", "1", "--train-iters", "2",
        "--lr", "1e-3"]


def _validated(argv, monkeypatch):
    """Megatron's args as pretrain_qwen3.main hands them to the dataset builder."""
    from megatron.training.arguments import parse_args, validate_args
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(sys, "argv", ["pretrain_qwen3.py", *argv])
    args = parse_args(add_tsp_arguments)
    prepare_args(args, argv)
    validate_args(args, {})
    return args


def test_prepare_args_turns_the_dataloader_mask_off_and_the_dataset_yields_none(monkeypatch):
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder)
    from megatron.core.datasets.gpt_dataset import MockGPTDataset
    from megatron_tsp.training.data import _dataset_config
    args = _validated(ARGV, monkeypatch)
    assert args.create_attention_mask_in_dataloader is False
    config = _dataset_config(args)
    assert config.create_attention_mask is False
    train, _, _ = BlendedMegatronDatasetBuilder(MockGPTDataset, [2, 0, 0], lambda: True,
                                                config).build()
    sample = train[0]
    assert sample["tokens"].shape == (64,)
    assert sample.get("attention_mask") is None, sample["attention_mask"].shape


def test_the_batch_moves_and_broadcasts_no_mask_even_if_the_flag_is_on(monkeypatch):
    """_full_batch with Megatron's default create_attention_mask_in_dataloader=True and a sample
    that carries a mask: the mask is neither moved to the device nor broadcast."""
    from types import SimpleNamespace
    from megatron_tsp.training import data
    seen = {}

    def broadcast(batch, **kwargs):
        seen.update(kwargs, keys=sorted(k for k, v in batch.items() if v is not None))
        return batch

    monkeypatch.setattr(data, "get_batch_on_this_tp_rank", broadcast)
    for name, value in (("get_tensor_model_parallel_rank", 0),
                        ("get_tensor_model_parallel_src_rank", 0),
                        ("get_tensor_model_parallel_group", None),
                        ("is_pipeline_first_stage", True), ("is_pipeline_last_stage", True)):
        monkeypatch.setattr(data.mpu, name, lambda value=value, **_: value)
    S = 16
    sample = {"tokens": torch.zeros(1, S, dtype=torch.long),
              "labels": torch.zeros(1, S, dtype=torch.long), "loss_mask": torch.ones(1, S),
              "position_ids": torch.arange(S)[None],
              "attention_mask": torch.ones(1, 1, S, S, dtype=torch.bool)}
    args = SimpleNamespace(create_attention_mask_in_dataloader=True, context_parallel_size=1,
                           micro_batch_size=1, seq_length=S, pipeline_model_parallel_size=1)
    batch = data._full_batch(iter([sample]), args)
    assert seen["create_attention_mask_in_dataloader"] is False
    assert "attention_mask" not in seen["keys"]
    assert batch.get("attention_mask") is None
