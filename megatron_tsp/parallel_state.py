"""The fused TSP group: one mesh axis of size D in Megatron-Core's tensor-parallel slot.

Every rank of a TSP group holds 1/D of every weight and 1/D of every sequence. Megatron's own
parallel_state owns the groups (so its DDP, optimizer and checkpointing see a TP group of size D);
this module names them for what they are here and validates sizes before any group exists.
"""

import os
from datetime import timedelta
from typing import Dict, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu

from megatron_tsp.config import Qwen3Config


def validate_tsp_config(
    config: Qwen3Config,
    tsp_size: int,
    seq_length: Optional[int] = None,
    world_size: Optional[int] = None,
    pipeline_size: int = 1,
) -> None:
    """Raise ValueError naming the flag for any size TSP cannot run (DESIGN.md section 7)."""
    if tsp_size < 1:
        raise ValueError(f"--tsp-size must be >= 1, got {tsp_size}")
    if pipeline_size < 1:
        raise ValueError(f"--pipeline-model-parallel-size must be >= 1, got {pipeline_size}")
    if config.num_attention_heads % tsp_size:
        raise ValueError(
            f"--num-attention-heads ({config.num_attention_heads}) must be divisible by "
            f"--tsp-size ({tsp_size})")
    groups = config.num_query_groups
    if groups % tsp_size and tsp_size % groups:
        raise ValueError(
            f"--num-query-groups ({groups}) must be a multiple or a divisor of "
            f"--tsp-size ({tsp_size})")
    if (config.num_attention_heads + 2 * groups) * config.kv_channels % tsp_size:
        raise ValueError(
            f"--kv-channels ({config.kv_channels}) x (heads + 2 x query groups) must be divisible "
            f"by --tsp-size ({tsp_size})")
    if config.ffn_hidden_size % tsp_size:
        raise ValueError(
            f"--ffn-hidden-size ({config.ffn_hidden_size}) must be divisible by "
            f"--tsp-size ({tsp_size})")
    if seq_length is not None:
        if seq_length <= 0 or seq_length % (2 * tsp_size):
            raise ValueError(
                f"--seq-length ({seq_length}) must be a positive multiple of 2 x --tsp-size "
                f"({2 * tsp_size}): the zigzag layout cuts each sequence into 2D equal chunks")
        if seq_length > config.max_position_embeddings:
            raise ValueError(
                f"--seq-length ({seq_length}) exceeds --max-position-embeddings "
                f"({config.max_position_embeddings})")
    if world_size is not None:
        check_world_size(world_size, tsp_size, pipeline_size)


def check_world_size(world_size: int, tsp_size: int, pipeline_size: int = 1) -> None:
    if world_size % (tsp_size * pipeline_size):
        raise ValueError(
            f"world size ({world_size}) must be divisible by --tsp-size ({tsp_size}) x "
            f"--pipeline-model-parallel-size ({pipeline_size})")


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
        check_world_size(int(os.environ.get("WORLD_SIZE", "1")), tsp_size,
                         pipeline_model_parallel_size)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group(backend or default_backend(),
                                timeout=timedelta(minutes=timeout_minutes))
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    check_world_size(dist.get_world_size(), tsp_size, pipeline_model_parallel_size)
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
