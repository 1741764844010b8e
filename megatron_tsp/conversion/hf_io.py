"""Reading and writing Hugging Face checkpoint directories, one tensor at a time.

A directory holds config.json and either model.safetensors or model-0000K-of-0000N.safetensors
with model.safetensors.index.json (`weight_map`: tensor name -> file). Files are checked before
any tensor is read: a missing shard or one shorter than its header promises is reported by name.
safetensors never executes code from a file. The dtype the weights are in is read from
config.json and from the safetensors headers, not from the tensors.
"""

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "generation_config.json")
# the dtypes weights are converted in without loss (as config.json and safetensors headers name
# them): the ones Megatron trains in
CONFIG_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_HEADER_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def check_safetensors_file(path: Path) -> dict:
    """The file's header; ValueError naming the file if it is missing, truncated or has a corrupt
    header."""
    if not path.is_file():
        raise ValueError(f"{path}: missing shard")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: truncated (no safetensors header)")
        header_size = struct.unpack("<Q", prefix)[0]
        if header_size > size - 8:
            raise ValueError(f"{path}: truncated or not a safetensors file")
        try:
            header = json.loads(f.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: corrupt safetensors header") from None
    data_end = max((entry["data_offsets"][1] for name, entry in header.items()
                    if name != "__metadata__"), default=0)
    if 8 + header_size + data_end > size:
        raise ValueError(f"{path}: truncated ({size} bytes, header promises "
                         f"{8 + header_size + data_end})")
    return header


def read_hf_config(directory: str) -> dict:
    if not Path(directory).is_dir():
        raise ValueError(f"--hf-path {directory}: not a directory")
    return _read_json(Path(directory) / CONFIG)


class HFCheckpointReader:
    """Lazy access to the tensors of a Hugging Face directory."""

    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.config = read_hf_config(directory)
        if (self.directory / INDEX).is_file():
            weight_map = _read_json(self.directory / INDEX).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{self.directory / INDEX}: no weight_map")
            self.weight_map: Dict[str, str] = weight_map
        elif (self.directory / SINGLE).is_file():
            with safe_open(self.directory / SINGLE, framework="pt") as f:
                self.weight_map = {name: SINGLE for name in f.keys()}
        else:
            raise ValueError(f"--hf-path {directory}: neither {SINGLE} nor {INDEX}")
        self._header_dtypes = {
            file: sorted({entry["dtype"] for name, entry in
                          check_safetensors_file(self.directory / file).items()
                          if name != "__metadata__"})
            for file in sorted(set(self.weight_map.values()))}

    def dtype(self) -> torch.dtype:
        """The one dtype of the floating-point weights: config.json's (`torch_dtype` in
        transformers 4.x, `dtype` in 5.x), else the tensors'. Weights in another dtype than that
        (or than each other) are refused, naming the file: any single dtype chosen for them would
        round some, so the choice is left to the caller."""
        config_path = self.directory / CONFIG
        declared = {self.config[key] for key in ("torch_dtype", "dtype")
                    if self.config.get(key) is not None}
        if len(declared) > 1:
            raise ValueError(f"{config_path}: torch_dtype and dtype disagree: {sorted(declared)}")
        dtype, origin = None, config_path
        if declared:
            name = declared.pop()
            if name not in CONFIG_DTYPES:
                raise ValueError(f"{config_path}: dtype {name!r} is none of {list(CONFIG_DTYPES)}")
            dtype = CONFIG_DTYPES[name]
        for file, codes in self._header_dtypes.items():
            for code in codes:
                if not code.startswith(("F", "BF")):  # integer or boolean buffers, not weights
                    continue
                if code not in _HEADER_DTYPES:
                    raise ValueError(f"{self.directory / file}: {code} tensors; only "
                                     f"{list(_HEADER_DTYPES)} are converted as they are")
                if dtype is None:
                    dtype, origin = _HEADER_DTYPES[code], self.directory / file
                elif _HEADER_DTYPES[code] != dtype:
                    raise ValueError(f"{self.directory / file}: {code} tensors, but {origin} "
                                     f"has {dtype}")
        if dtype is None:
            raise ValueError(f"{self.directory}: no dtype in {CONFIG} and no floating-point "
                             "tensors")
        return dtype

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise ValueError(f"{self.directory}: no tensor {name}")
        with safe_open(self.directory / self.weight_map[name], framework="pt") as f:
            return f.get_tensor(name)


def write_hf_checkpoint(directory: str, config: dict,
                        tensors: Iterable[Tuple[str, torch.Tensor]],
                        max_shard_bytes: int = 5 * 2 ** 30,
                        tokenizer_dir: Optional[Path] = None) -> None:
    """Write sharded safetensors + index + config as tensors arrive (one shard held at a time).

    Files are written under temporary names and renamed once all are complete.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    shards, current, current_bytes, total = [], {}, 0, 0

    def flush():
        nonlocal current, current_bytes
        if current:
            path = out / f".shard-{len(shards):05d}.tmp"
            save_file(current, str(path), metadata={"format": "pt"})
            shards.append((path, list(current)))
            current, current_bytes = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if current and current_bytes + nbytes > max_shard_bytes:
            flush()
        current[name] = tensor.contiguous()
        current_bytes += nbytes
        total += nbytes
    flush()
    weight_map = {}
    for k, (path, names) in enumerate(shards):
        final = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(path, out / final)
        weight_map.update({name: final for name in names})
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                         "weight_map": weight_map}, indent=2))
    (out / CONFIG).write_text(json.dumps(config, indent=2))
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, out)


def copy_tokenizer_files(source: Path, destination: Path) -> bool:
    """Copy the tokenizer files that exist in `source`; True if there was any."""
    found = [source / name for name in TOKENIZER_FILES if (source / name).is_file()]
    if found:
        destination.mkdir(parents=True, exist_ok=True)
        for path in found:
            shutil.copy2(path, destination / path.name)
    return bool(found)
