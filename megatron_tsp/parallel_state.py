"""The fused TSP group: one mesh axis of size D in Megatron-Core's tensor-parallel slot.

Every rank of a TSP group holds 1/D of every weight and 1/D of every sequence. Megatron's own
parallel_state owns the groups (so its DDP, optimizer and checkpointing see a TP group of size D);
this module names them for what they are here, and refuses a world size they cannot divide before
any group exists (the other size rules: size_rules.py).
"""

import os
from datetime import timedelta
from typing import Dict, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from megatron_tsp.size_rules import refuse, world_problem


def default_backend() -> str:
    """NCCL (RCCL on ROCm) where a GPU is present, gloo on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def initialize_tsp(tsp_size: int, pipeline_model_parallel_size: int = 1,
                   backend: Optional[str] = None, timeout_minutes: int = 30) -> None:
    """Start torch.distributed (env:// as torchrun sets it) and build the TSP, DP and PP groups.

    The TSP group takes Megatron's tensor-parallel slot; context parallel stays 1 because TSP
    already shards the sequence.
    """
    if not dist.is_initialized():
        refuse(world_problem(int(os.environ.get("WORLD_SIZE", "1")), tsp_size,
                             pipeline_model_parallel_size))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group(backend or default_backend(),
                                timeout=timedelta(minutes=timeout_minutes))
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    refuse(world_problem(dist.get_world_size(), tsp_size, pipeline_model_parallel_size))
    mpu.initialize_model_parallel(
        tensor_model_parallel_size=tsp_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        context_parallel_size=1,
        distributed_timeout_minutes=timeout_minutes,
    )


def destroy_tsp() -> None:
    _kv_groups.clear()
    mpu.destroy_model_parallel()


def get_tsp_group() -> dist.ProcessGroup:
    return mpu.get_tensor_model_parallel_group()


_kv_groups: Dict[dist.ProcessGroup, dist.ProcessGroup] = {}


def get_tsp_kv_group() -> dist.ProcessGroup:
    """The TSP group's ranks again, for the keys/values alone. On NCCL one group's operations
    run in the order they were issued, so on the TSP group the K/V all-gather would wait behind
    the next head-group's weight broadcast, already in flight. Made on first use by the group's
    ranks only (every rank of a TSP group runs the same layers at the same time)."""
    group = get_tsp_group()
    if get_tsp_world_size() == 1:
        return group
    if group not in _kv_groups:
        _kv_groups[group] = dist.new_group(dist.get_process_group_ranks(group),
                                           use_local_synchronization=True)
    return _kv_groups[group]


def get_tsp_rank() -> int:
    return mpu.get_tensor_model_parallel_rank()


def get_tsp_world_size() -> int:
    return mpu.get_tensor_model_parallel_world_size()


def get_tsp_next_rank() -> int:
    """Group rank that receives from this rank in the ring (p + 1 mod D)."""
    return (get_tsp_rank() + 1) % get_tsp_world_size()


def get_tsp_prev_rank() -> int:
    """Group rank that sends to this rank in the ring (p - 1 mod D)."""
    return (get_tsp_rank() - 1) % get_tsp_world_size()
