"""A Megatron checkpoint on disk: where its directory keeps the latest iteration (the tracker
file), whether its shard files are whole, the arguments it was saved with, and loading a model's
weights from it. The model's own `sharded_state_dict` lives beside the model (models/qwen3.py).
"""

from pathlib import Path
from typing import Optional, Tuple

import torch

# Megatron's tracker file: names the latest saved iteration (or 'release')
TRACKER_NAME = "latest_checkpointed_iteration.txt"


def has_checkpoint(load) -> bool:
    """Whether the --load directory holds a Megatron checkpoint (its tracker file)."""
    return bool(load) and (Path(load) / TRACKER_NAME).is_file()


def checkpoint_to_load(load, pretrained_checkpoint) -> Optional[Tuple[str, str]]:
    """(flag, directory) of the checkpoint a launch will load: --load's, else, when it holds
    none, --pretrained-checkpoint's (Megatron loads that one as a finetune); None for neither."""
    for flag, directory in (("--load", load), ("--pretrained-checkpoint", pretrained_checkpoint)):
        if has_checkpoint(directory):
            return flag, directory
    return None


def checkpoint_dir(load: str) -> Path:
    """The iteration (or release) directory that latest_checkpointed_iteration.txt names."""
    tracker = Path(load) / TRACKER_NAME
    if not tracker.is_file():
        raise ValueError(f"--load {load}: no {TRACKER_NAME}")
    try:
        tag = tracker.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as error:  # a ValueError too, but one that names no file
        raise ValueError(f"--load {load}: {tracker}: not UTF-8 text (byte "
                         f"{error.object[error.start]:#04x} at offset {error.start}); it should "
                         "hold an iteration number or 'release'") from None
    if tag != "release" and not tag.isdigit():
        raise ValueError(f"--load {load}: {tracker} holds {tag!r}, not an iteration")
    directory = Path(load) / ("release" if tag == "release" else f"iter_{int(tag):07d}")
    if not directory.is_dir():
        raise ValueError(f"--load {load}: {tracker} names {directory}, which does not exist")
    return directory


def check_checkpoint_files(load: str) -> None:
    """Every shard file the checkpoint's metadata names exists and is as long as the metadata
    says: a missing or truncated shard is named before anything is loaded (a shard cut mid-way
    would otherwise fail mid-load, or not at all for entries before the cut)."""
    from torch.distributed.checkpoint import FileSystemReader
    directory = checkpoint_dir(load)
    try:
        storage = FileSystemReader(str(directory)).read_metadata().storage_data
        if not isinstance(storage, dict):
            raise TypeError(f"storage_data is a {type(storage).__name__}")
        needed = {}
        for item in storage.values():
            needed[item.relative_path] = max(needed.get(item.relative_path, 0),
                                             item.offset + item.length)
    except Exception as error:
        raise ValueError(f"--load {load}: cannot read {directory / '.metadata'} "
                         f"({type(error).__name__}: {str(error)[:300]})") from None
    for name, end in sorted(needed.items()):
        if Path(name).name != name:  # DCP writes flat names; anything else points elsewhere
            raise ValueError(f"--load {load}: {directory / '.metadata'} names {name!r}, a file "
                             "outside the checkpoint directory")
        path = directory / name
        if not path.is_file():
            raise ValueError(f"--load {load}: {path} is missing (the checkpoint's metadata "
                             "names it)")
        if path.stat().st_size < end:
            raise ValueError(f"--load {load}: {path} is truncated: {path.stat().st_size} bytes, "
                             f"the checkpoint's metadata needs {end}")


def checkpoint_args(load: str):
    """The Megatron args a checkpoint was saved with (no process group needed)."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException
    directory = checkpoint_dir(load)
    try:
        return dist_checkpointing.load_common_state_dict(str(directory))["args"]
    # unreadable metadata is the file's fault (DCP raises a BaseException subclass)
    except (Exception, CheckpointException) as error:
        last_line = (str(error).strip().splitlines() or [""])[-1][:300]
        raise ValueError(f"--load {load}: cannot read the checkpoint metadata in {directory} "
                         f"({type(error).__name__}: {last_line})") from None


def load_model_weights(model: torch.nn.Module, directory: str, nested_key: str = "model") -> None:
    """Load a torch_dist checkpoint directory into the model, at whatever layout it was saved.

    nested_key is where the model's entries sit (Megatron's save_checkpoint nests them under
    "model"; None for a bare model save). Empty extra states are allowed to be absent, as
    Megatron's load_checkpoint allows: not every sharded_state_dict carries them.
    """
    from megatron.core import dist_checkpointing
    request = model.sharded_state_dict()
    loaded = dist_checkpointing.load({nested_key: request} if nested_key else request, directory)
    missing, unexpected = model.load_state_dict(loaded[nested_key] if nested_key else loaded,
                                                strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), missing

