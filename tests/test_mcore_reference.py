"""megatron-core's own GPTModel (local spec, Qwen3 numerics) runs on CPU over gloo, at TP 1 and 2.

The worker bodies are module-level functions: spawned ranks import this module to find them.
"""

import math
import types

import megatron_tsp  # noqa: F401  (adapts megatron-core before it is imported below)

import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed.finalize_model_grads import (
    _allreduce_non_tensor_model_parallel_grads,
)
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from megatron_tsp.config import Qwen3Config
from megatron_tsp.models.mcore_gpt import build_mcore_qwen3
from tests.dist import run_distributed

CONFIG = Qwen3Config(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                     kv_channels=16, ffn_hidden_size=128, vocab_size=512)
SEED = 1234
BATCH, SEQ = 2, 16


def _init_megatron(tensor_model_parallel_size: int) -> None:
    if not dist.is_initialized():
        dist.init_process_group("gloo")  # env:// from tests.dist
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_model_parallel_size)
    torch.manual_seed(SEED)
    model_parallel_cuda_manual_seed(SEED)


def _batch(vocab_size: int):
    generator = torch.Generator().manual_seed(SEED)
    tokens = torch.randint(0, vocab_size, (BATCH, SEQ), generator=generator)
    labels = torch.randint(0, vocab_size, (BATCH, SEQ), generator=generator)
    return tokens, labels


def _loss_and_grads(model, tokens, labels):
    """Per-token loss [b, s] and every parameter's grad after backward of the mean loss."""
    position_ids = torch.arange(SEQ).expand(BATCH, SEQ)
    loss = model(tokens, position_ids, None, labels=labels)
    loss.mean().backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def _shard(name: str, full: torch.Tensor, param: torch.nn.Parameter, rank: int, tp: int):
    """This rank's piece of a full (TP=1) tensor, laid out as megatron shards `param`."""
    if not getattr(param, "tensor_model_parallel", False):
        return full  # norms: replicated
    if "linear_fc1" in name:
        # SwiGLU fc1 is [gate; up]; each rank holds [gate_r; up_r] (stride 2).
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp)[rank], up.chunk(tp)[rank]])
    # linear_qkv rows are grouped per query group ([q..., k, v] per group), so a contiguous
    # row split hands each rank whole groups; row-parallel layers split columns (dim 1).
    return full.chunk(tp, dim=param.partition_dim)[rank]


def _tp1_single_process():
    _init_megatron(1)
    model = build_mcore_qwen3(CONFIG)
    tokens, labels = _batch(CONFIG.vocab_size)
    loss, grads = _loss_and_grads(model, tokens, labels)
    parallel_state.destroy_model_parallel()
    return loss, grads


def test_tp1_forward_loss_and_backward():
    loss, grads = run_distributed(_tp1_single_process, 1)[0]
    assert loss.shape == (BATCH, SEQ) and loss.dtype == torch.float32
    assert torch.isfinite(loss).all()
    # Random init with std 0.02 gives near-uniform logits over the (padded) vocabulary.
    uniform = math.log(CONFIG.padded_vocab_size(1))
    assert abs(loss.mean().item() - uniform) < 0.1 * uniform, (loss.mean().item(), uniform)
    assert grads and all(g is not None for g in grads.values()), "a parameter got no grad"
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, f"{name}: all-zero grad"


def _tp2_against_tp1(sequence_parallel: bool):
    # The reference: TP=1 (DP=2) with the full weights, identical on both ranks.
    _init_megatron(1)
    reference = build_mcore_qwen3(CONFIG)
    tokens, labels = _batch(CONFIG.vocab_size)
    ref_loss, ref_grads = _loss_and_grads(reference, tokens, labels)
    full_weights = {name: p.detach() for name, p in reference.named_parameters()}
    parallel_state.destroy_model_parallel()

    _init_megatron(2)
    rank, tp = parallel_state.get_tensor_model_parallel_rank(), 2
    model = build_mcore_qwen3(CONFIG, tensor_model_parallel_size=tp,
                              sequence_parallel=sequence_parallel)
    params = dict(model.named_parameters())
    assert params.keys() == full_weights.keys()
    same_init = all(torch.equal(p, _shard(n, full_weights[n], p, rank, tp))
                    for n, p in params.items())
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(_shard(name, full_weights[name], param, rank, tp))
    loss, grads = _loss_and_grads(model, tokens, labels)
    # Sum the partial grads of replicated params (SP norms, q/k norms) over TP, as
    # finalize_model_grads does; it reads the DDP config only for its FSDP switch.
    model.ddp_config = types.SimpleNamespace(use_megatron_fsdp=False)
    _allreduce_non_tensor_model_parallel_grads([model], model.config)
    expected = {n: _shard(n, ref_grads[n], params[n], rank, tp) for n in params}
    sp_marked = sorted(n for n, p in params.items() if getattr(p, "sequence_parallel", False))
    parallel_state.destroy_model_parallel()
    return dict(ref_loss=ref_loss, loss=loss, grads=grads, expected=expected,
                same_init=same_init, sp_marked=sp_marked)


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp2", "tp2-sp"])
def test_tp2_matches_tp1(sequence_parallel):
    for rank, result in enumerate(run_distributed(_tp2_against_tp1, 2, sequence_parallel)):
        torch.testing.assert_close(result["loss"], result["ref_loss"], rtol=1e-5, atol=0)
        for name, grad in result["grads"].items():
            torch.testing.assert_close(grad, result["expected"][name], rtol=1e-4, atol=1e-7,
                                       msg=lambda m, n=name: f"rank {rank} {n}: {m}")
        # CPU initialisation draws the full master weight and keeps this rank's slice, so a
        # seed gives the same model at any TP size.
        assert result["same_init"], f"rank {rank}: TP=2 init differs from the TP=1 weights"
        # Like TE's norms, every norm (q/k ones too) is marked for the TP grad sum under SP.
        norms = sorted(n for n in result["grads"] if n.endswith("layernorm.weight"))
        assert result["sp_marked"] == (norms if sequence_parallel else []), result["sp_marked"]
