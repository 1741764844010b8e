"""A minimal torch_dist checkpoint written by Megatron's dist_checkpointing (two shard files),
and a pickled payload that would run a shell command if it were ever unpickled."""

import os

from tests.dist import run_distributed


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _save(directory, marker=None):
    """Built here, in the saving process: handing the payload over would itself unpickle it."""
    import argparse
    import torch
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    iteration = directory / "iter_0000001"
    iteration.mkdir(parents=True, exist_ok=True)
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    args = RunsCodeWhenUnpickled(marker) if marker else argparse.Namespace(num_layers=3)
    ranks = torch.distributed.get_world_size()
    weight = torch.full((2000 // ranks,), float(rank))
    state = {"args": args,
             "weight": ShardedTensor.from_rank_offsets("weight", weight, (0, rank, ranks))}
    dist_checkpointing.save(state, str(iteration))
    if rank == 0:
        (directory / "latest_checkpointed_iteration.txt").write_text("1")


def write_checkpoint(directory, marker=None):
    """directory/iter_0000001 with two shard files, or with one whose args carry the payload if
    marker (saving from two ranks would exchange, and so unpickle, the payload while saving)."""
    run_distributed(_save, 1 if marker else 2, directory, marker)
    return directory / "iter_0000001"
