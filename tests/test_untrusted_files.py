"""Loading a checkpoint never runs code hidden in it: the pickled common state of a torch_dist
checkpoint is read with weights_only, so a crafted payload is refused and never executed."""

import os

import pytest
import torch

from megatron_tsp.checkpoint import checkpoint_args
from tests.dist import run_distributed


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _save(directory, marker=None):
    """Save a tiny checkpoint whose args are the payload (built here, in the saving process:
    handing it over to this process would itself unpickle it)."""
    import argparse
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    iteration = directory / "iter_0000001"
    iteration.mkdir(parents=True)
    args = _RunsCodeWhenUnpickled(marker) if marker else argparse.Namespace(num_layers=3)
    state = {"args": args, "weight": ShardedTensor.from_rank_offsets("weight", torch.ones(4))}
    torch.distributed.init_process_group("gloo")
    dist_checkpointing.save(state, str(iteration))
    (directory / "latest_checkpointed_iteration.txt").write_text("1")


def _write_checkpoint(directory, marker=None):
    run_distributed(_save, 1, directory, marker)


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "code_ran"
    _write_checkpoint(tmp_path / "ckpt", str(marker))
    with pytest.raises(ValueError, match="cannot read the checkpoint metadata"):
        checkpoint_args(str(tmp_path / "ckpt"))
    assert not marker.exists()


def test_an_honest_checkpoint_still_loads(tmp_path):
    _write_checkpoint(tmp_path / "ckpt")
    assert checkpoint_args(str(tmp_path / "ckpt")).num_layers == 3
