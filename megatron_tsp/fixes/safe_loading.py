"""Untrusted checkpoint files never execute code when they are read.

Two pickles in a torch_dist checkpoint were read unrestricted; both are closed here, everywhere
(this is not CPU-specific):

1. torch/distributed/checkpoint/filesystem.py FileSystemReader.read_metadata reads `.metadata`
with pickle.load. It is read here by an unpickler that admits only the globals DCP metadata is
made of (its dataclasses and enums by exact name, torch.Size, dtypes, layouts) and refuses every
other global.

2. torch/distributed/checkpoint/default_planner.py DefaultLoadPlanner.load_bytes unpickles every
non-tensor entry of a checkpoint (Megatron's common state: args, iteration, optimizer and RNG
metadata) with torch.load(weights_only=False): a crafted checkpoint could run arbitrary code on
--load. megatron-core's own MCoreLoadPlanner inherits it. Here it unpickles with
weights_only=True, which admits tensors, containers and the classes megatron-core registers as
safe (megatron/core/safe_globals.py: argparse.Namespace, its enums, ...) and refuses the rest.
"""

import functools
import pickle

import torch
from torch.distributed.checkpoint import default_planner
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import StorageMeta

# every global a DCP .metadata pickle may name; exact (module, name) pairs, never a dotted name
# (which the unpickler would follow through module attributes to anything importable)
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.planner": {
        "SavePlan", "LoadPlan", "WriteItem", "ReadItem", "WriteItemType", "LoadItemType",
        "TensorWriteData", "BytesIOWriteData"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo", "_StoragePrefix",
                                                "SerializationFormat"},
    # empty stand-ins megatron-core keeps for checkpoints of megatron-core 0.15
    "megatron.core.dist_checkpointing.strategies.torch": {"MCoreMetadata", "MCoreSavePlan"},
    "torch": {"Size"},
    "torch.serialization": {"_get_layout"},
    "collections": {"OrderedDict"},
}


def _load_bytes_weights_only(self, read_item, value) -> None:
    obj = torch.load(value, weights_only=True)
    if self.flatten_state_dict:
        default_planner.set_element(self.original_state_dict,
                                    self.mappings[read_item.dest_index.fqn], obj)
    else:
        self.state_dict[read_item.dest_index.fqn] = obj


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # decided before importing anything: importing an arbitrary module can itself run code
        if name in _METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and "." not in name and isinstance(getattr(torch, name, None),
                                                                 torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of checkpoint metadata")


def _read_metadata_restricted(self, *args, **kwargs):
    path = self._get_metadata_path(kwargs.get("rank"))
    with self.fs.create_stream(path, "rb") as metadata_file:
        metadata = _MetadataUnpickler(metadata_file).load()
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    metadata.storage_meta.load_id = self.load_id
    return metadata


@functools.cache
def apply_safe_loading() -> None:
    import megatron.core  # noqa: F401  (registers megatron-core's safe globals)
    default_planner.DefaultLoadPlanner.load_bytes = _load_bytes_weights_only
    FileSystemReader.read_metadata = _read_metadata_restricted
