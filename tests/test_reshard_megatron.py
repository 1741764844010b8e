"""A checkpoint saved by pretrain_qwen3.py at --tsp-size 2 after training gives the same loss when
loaded at --tsp-size 4 and into plain megatron-core GPTModel at tensor-parallel size 2; and a
checkpoint written by GPTModel loads back into the TSP model."""

import pytest
import torch

from megatron_tsp import parallel_state as ps
from tests.dist import run_distributed
from tests.pretrain_runner import MOCK_RUN, losses_of

pytestmark = pytest.mark.slow
SEQ, BATCH = 64, 2


def _batch(vocab_size):
    tokens = torch.randint(0, vocab_size, (BATCH, SEQ + 1),
                           generator=torch.Generator().manual_seed(9))
    return tokens[:, :-1], tokens[:, 1:], torch.arange(SEQ).expand(BATCH, SEQ)


def _saved_config(checkpoint):
    from megatron_tsp.checkpoint import checkpoint_args
    from megatron_tsp.config_adapters import qwen3_config_from_args
    args = checkpoint_args(checkpoint)
    return qwen3_config_from_args(args, args.tsp_vocab_size)


def _tsp_loss(tsp_size, checkpoint, directory=None):
    from megatron_tsp.checkpoint import checkpoint_dir, load_model_weights
    from megatron_tsp.layers.vocab import masked_token_mean
    from megatron_tsp.layout import scatter_to_local
    from megatron_tsp.models.qwen3 import TSPQwen3Model
    config = _saved_config(checkpoint)
    ps.initialize_tsp(tsp_size)
    model = TSPQwen3Model(config)
    if directory is None:
        load_model_weights(model, str(checkpoint_dir(checkpoint)))
    else:  # a bare GPTModel save
        load_model_weights(model, directory, nested_key=None)
    tokens, labels, positions = (scatter_to_local(t, 1) for t in _batch(config.vocab_size))
    with torch.no_grad():
        loss = model(tokens, positions, labels=labels)
        _, mean = masked_token_mean(loss, torch.ones_like(loss))
    ps.destroy_tsp()
    return mean.item()


def _gptmodel_loss(tp_size, checkpoint, save_to):
    from megatron.core import dist_checkpointing
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron_tsp.checkpoint import checkpoint_dir, load_model_weights
    from megatron_tsp.models.mcore_gpt import build_mcore_qwen3
    config = _saved_config(checkpoint)
    ps.initialize_tsp(tp_size)
    model_parallel_cuda_manual_seed(0)
    model = build_mcore_qwen3(config, tp_size)
    load_model_weights(model, str(checkpoint_dir(checkpoint)))
    tokens, labels, positions = _batch(config.vocab_size)
    with torch.no_grad():
        loss = model(tokens, positions, None, labels=labels).mean()
    dist_checkpointing.save(model.sharded_state_dict(), save_to)
    ps.destroy_tsp()
    return loss.item()


def test_trained_checkpoint_gives_the_same_loss_at_tsp4_and_in_megatron_tp2(tmp_path):
    checkpoint = tmp_path / "ckpt"
    losses_of(2, MOCK_RUN + ["--tsp-size", "2", "--train-iters", "3", "--save", checkpoint,
                             "--save-interval", "3"], tmp_path / "cache")
    assert _saved_config(str(checkpoint)).vocab_size % 512 == 0  # no padding: GPTModel == TSP
    at_tsp2 = run_distributed(_tsp_loss, 2, 2, str(checkpoint))[0]
    at_tsp4 = run_distributed(_tsp_loss, 4, 4, str(checkpoint))[0]
    gpt_save = tmp_path / "gptmodel_tp2"
    gpt_save.mkdir()
    in_megatron = run_distributed(_gptmodel_loss, 2, 2, str(checkpoint), str(gpt_save))[0]
    back_in_tsp = run_distributed(_tsp_loss, 1, 1, str(checkpoint), str(gpt_save))[0]
    for loss in (at_tsp4, in_megatron, back_in_tsp):
        assert abs(loss - at_tsp2) <= 1e-5 * at_tsp2, (at_tsp2, at_tsp4, in_megatron, back_in_tsp)
