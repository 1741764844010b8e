"""Loading a checkpoint never runs code hidden in it: the pickled common state of a torch_dist
checkpoint is read with weights_only and its .metadata by an unpickler that admits only DCP's
metadata classes, so a crafted payload is refused and never executed."""

import pickle

import pytest

from megatron_tsp.checkpoint import check_checkpoint_files, checkpoint_args
from tests.dist import run_distributed
from tests.small_checkpoint import RunsCodeWhenUnpickled, write_checkpoint


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "code_ran"
    write_checkpoint(tmp_path / "ckpt", str(marker))
    with pytest.raises(ValueError, match="cannot read the checkpoint metadata"):
        checkpoint_args(str(tmp_path / "ckpt"))
    assert not marker.exists()


def test_an_honest_checkpoint_still_loads(tmp_path):
    write_checkpoint(tmp_path / "ckpt")
    assert checkpoint_args(str(tmp_path / "ckpt")).num_layers == 3


def _load_with_megatron(directory):
    """Megatron's own torch_dist load of the checkpoint: the error it raises, as text."""
    import torch
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    torch.distributed.init_process_group("gloo")
    request = {"weight": ShardedTensor.from_rank_offsets("weight", torch.empty(2000))}
    try:
        dist_checkpointing.load(request, directory)
    except BaseException as error:  # DCP's CheckpointException is a BaseException
        return repr(error)
    return None


def test_a_metadata_file_carrying_code_is_refused_and_the_code_never_runs(tmp_path):
    iteration = write_checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "code_ran"
    with open(iteration / ".metadata", "wb") as f:
        pickle.dump(RunsCodeWhenUnpickled(str(marker)), f)
    with pytest.raises(ValueError, match=r"cannot read .*\.metadata .*posix.system is not part"):
        check_checkpoint_files(str(tmp_path / "ckpt"))
    error = run_distributed(_load_with_megatron, 1, str(iteration))[0]
    assert error is not None and "is not part of checkpoint metadata" in error, error
    assert not marker.exists()


def test_an_honest_metadata_file_still_loads_with_megatron(tmp_path):
    iteration = write_checkpoint(tmp_path / "ckpt")
    check_checkpoint_files(str(tmp_path / "ckpt"))
    assert run_distributed(_load_with_megatron, 1, str(iteration))[0] is None


def _pickle_calling(module, name, argument):
    """A protocol-4 pickle whose only content is the call module.name(argument)."""
    def text(value):
        data = value.encode()
        return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE
    return b"\x80\x04" + text(module) + text(name) + b"\x93" + text(argument) + b"\x85R."


@pytest.mark.parametrize("module,name", [
    ("torch.distributed.checkpoint.filesystem", "os.system"),  # a dotted name reaches anything
    ("torch.distributed.checkpoint.filesystem", "uuid.SafeUUID"),  # an enum, but not DCP's
    ("torch.distributed.checkpoint.metadata", "dataclasses.dataclass"),
    ("torch.distributed.checkpoint.filesystem", "FileSystemReader"),  # a real DCP class
    ("os", "system"),
])
def test_metadata_naming_anything_but_dcp_metadata_classes_is_refused(tmp_path, module, name):
    marker = tmp_path / "code_ran"
    directory = tmp_path
    (directory / ".metadata").write_bytes(_pickle_calling(module, name, f"touch {marker}"))
    from torch.distributed.checkpoint import FileSystemReader
    with pytest.raises(pickle.UnpicklingError, match="is not part of checkpoint metadata"):
        FileSystemReader(str(directory)).read_metadata()
    assert not marker.exists()
    assert pickle.loads(_pickle_calling("builtins", "len", "abc")) == 3  # the pickles are real
