"""One training step (forward, backward, gradient sync, Adam) of each scheme, on one rank.

    tsp     TSPQwen3Model at TSP size D (megatron_tsp), keeping everything for backward
    tsp+M   the same recomputing by mode M of layers/recompute.py (activations, selective, full)
    tp      megatron-core GPTModel at tensor-parallel size D
    tp-sp   the same with Megatron sequence parallelism
    cp      context parallel, full replicated weights (benchmarks/cp_model.py)
    single  megatron-core GPTModel on one process (D = 1)

Every scheme starts from the same weights, TSPQwen3Model.init_weights(seed) at this group's size
(whose shards are Megatron's TP shards, gathered whole by full_state_dict for cp), and sees the
same batch, so all report the same loss. Gradients stay allocated between steps (zeroed, not freed), as
Megatron's DDP grad buffers do, so they count in every step's memory. Models and batches live on
the rank's GPU when there is one (launch.py picks it), else on the CPU.
"""

import types
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from megatron_tsp import comm
from megatron_tsp import parallel_state as ps
from megatron_tsp.layers.recompute import MODES
from megatron_tsp.layers.vocab import masked_token_mean
from megatron_tsp.layout import scatter_to_local
from megatron_tsp.config import Qwen3Config
from megatron_tsp.device import compute_device

from benchmarks.memory import PeakMemory

TSP_SCHEMES = tuple("tsp" if mode == "none" else f"tsp+{mode}" for mode in MODES)
SCHEMES = (*TSP_SCHEMES, "tp", "tp-sp", "cp", "single")


def tsp_mode(scheme: str) -> str:
    """The recompute mode of a TSP scheme."""
    return scheme.partition("+")[2] or "none"


def scheme_group_size(scheme: str, group_size: int) -> int:
    return 1 if scheme == "single" else group_size


@dataclass
class Batch:
    """Full-sequence tokens, labels and position ids [b, S], the same on every rank."""

    tokens: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor


def make_batch(vocab_size: int, micro_batch_size: int, seq_length: int, seed: int) -> Batch:
    generator = torch.Generator().manual_seed(seed + seq_length)
    ids = torch.randint(0, vocab_size, (micro_batch_size, seq_length + 1), generator=generator)
    positions = torch.arange(seq_length).expand(micro_batch_size, seq_length)
    return Batch(*(t.contiguous().to(compute_device())
                   for t in (ids[:, :-1], ids[:, 1:], positions)))


def _local(batch: Batch):
    return tuple(scatter_to_local(t, dim=1) for t in (batch.tokens, batch.labels, batch.positions))


def _tsp_model(config: Qwen3Config, seed: int, mode: str = "none"):
    """The model every scheme trains, as TSP holds it at this group's size."""
    from megatron_tsp.models.qwen3 import build_tsp_qwen3

    model = build_tsp_qwen3(config, mode)
    model.init_weights(seed)
    return model


def _build_tsp(config: Qwen3Config, seed: int, mode: str):
    model = _tsp_model(config, seed, mode)
    model.to(compute_device())

    def forward_backward(batch: Batch, memory: Optional[PeakMemory]) -> torch.Tensor:
        ids, labels, positions = _local(batch)
        loss = model(ids, positions, labels=labels)
        to_backprop, mean = masked_token_mean(loss, torch.ones_like(loss))
        _mark(memory, "forward_end")
        to_backprop.backward()
        comm.all_reduce_replicated_grads(model)
        return mean

    return model, forward_backward


def _build_cp(config: Qwen3Config, seed: int):
    from megatron_tsp.models.full_weights import full_state_dict

    from benchmarks.cp_model import CPQwen3Model

    model = CPQwen3Model(config, full_state_dict(_tsp_model(config, seed)), compute_device())

    def forward_backward(batch: Batch, memory: Optional[PeakMemory]) -> torch.Tensor:
        ids, labels, positions = _local(batch)
        loss = model(ids, positions, labels)
        to_backprop, mean = masked_token_mean(loss, torch.ones_like(loss))
        _mark(memory, "forward_end")
        to_backprop.backward()
        model.all_reduce_grads()
        return mean

    return model, forward_backward


def _build_megatron(config: Qwen3Config, seed: int, tp: int, sequence_parallel: bool):
    from megatron.core.distributed.finalize_model_grads import (
        _allreduce_non_tensor_model_parallel_grads,
    )
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_tsp.models.mcore_gpt import build_mcore_qwen3

    from benchmarks import mcore_counters
    from benchmarks.fused_attention import FusedDotProductAttention

    mcore_counters.install()
    model_parallel_cuda_manual_seed(0)
    model = build_mcore_qwen3(config, tp, sequence_parallel,
                              core_attention=FusedDotProductAttention)
    # TSP's shards at D are GPTModel's at tensor-parallel size D, name for name
    shards = dict(_tsp_model(config, seed).named_parameters())
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(shards[name])
    # finalize_model_grads' norm-gradient sum reads the DDP config only for its FSDP switch
    model.ddp_config = types.SimpleNamespace(use_megatron_fsdp=False)

    def forward_backward(batch: Batch, memory: Optional[PeakMemory]) -> torch.Tensor:
        loss = model(batch.tokens, batch.positions, None, labels=batch.labels)  # [b, S]
        mean = loss.mean()
        _mark(memory, "forward_end")
        mean.backward()
        _allreduce_non_tensor_model_parallel_grads([model], model.config)
        return mean.detach()

    return model, forward_backward


def _mark(memory: Optional[PeakMemory], name: str) -> None:
    if memory is not None:
        memory.mark(name)


class SchemeRank:
    """This rank's model, optimizer and step for one scheme; the process groups are set up here.

    `step(batch, memory)` runs forward, backward, gradient sync and the Adam update and returns
    the global mean loss.
    """

    def __init__(self, scheme: str, config: Qwen3Config, group_size: int, seed: int):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r} in --schemes; choose from {SCHEMES}")
        ps.initialize_tsp(scheme_group_size(scheme, group_size))
        D = ps.get_tsp_world_size()
        if scheme in TSP_SCHEMES:
            self.model, self._forward_backward = _build_tsp(config, seed, tsp_mode(scheme))
        elif scheme == "cp":
            self.model, self._forward_backward = _build_cp(config, seed)
        else:  # tp, tp-sp, single (D = 1)
            self.model, self._forward_backward = _build_megatron(config, seed, D,
                                                                 scheme == "tp-sp")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-5)

    def step(self, batch: Batch, memory: Optional[PeakMemory] = None) -> float:
        mean = self._forward_backward(batch, memory)
        _mark(memory, "backward_end")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)
        return float(mean)

    def model_state_bytes(self) -> Dict[str, int]:
        """Bytes of this rank's params, grads and optimizer state (storages counted once)."""
        def total(tensors) -> int:
            storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                        for t in tensors if t is not None}
            return sum(storages.values())

        params = list(self.model.parameters())
        state = [t for s in self.optimizer.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor)]
        return {"params_bytes": total(params), "grads_bytes": total(p.grad for p in params),
                "optimizer_bytes": total(state)}

    def close(self) -> None:
        ps.destroy_tsp()
