"""A Megatron indexed dataset (.bin/.idx pair) is checked whole before training reads it.

Megatron's IndexedDataset memory-maps both files and trusts them: a .bin cut short fails only
when a sample past the cut is drawn (hours into a run), and a truncated .idx can load without
complaint. The checks here are O(1) in the dataset size (header, file sizes, the last entries),
so they run on every rank at launch. They do not detect bytes changed inside either file:
the format carries no checksum.

.idx layout: magic (9 bytes), version u64, dtype code u8, sequence count u64, document count u64,
then sequence lengths int32[n], sequence pointers int64[n] (byte offsets into .bin), document
indices int64[d] (0, then the sequence each document ends at), and for multimodal datasets
sequence modes int8[n].
"""

import struct
from pathlib import Path

import numpy
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix, parse_and_normalize_split)
from megatron.core.datasets.indexed_dataset import _INDEX_HEADER, DType

_FIXED = struct.Struct("<9sQBQQ")


def check_indexed_dataset(prefix: str, flag: str) -> int:
    """The number of sequences (GPT documents) in prefix.{idx,bin}; ValueError naming the flag
    and the file if the pair is missing, not an index, truncated, or not the pair the index
    describes."""
    idx, bin_ = Path(prefix + ".idx"), Path(prefix + ".bin")
    for path in (bin_, idx):
        if not path.is_file():
            raise ValueError(f"{flag} {prefix}: {path} does not exist")

    def corrupt(path, why):
        return ValueError(f"{flag} {prefix}: {path} is corrupt: {why}")

    idx_size = idx.stat().st_size
    with open(idx, "rb") as stream:
        fixed = stream.read(_FIXED.size)
    if len(fixed) < _FIXED.size or fixed[:9] != _INDEX_HEADER:
        raise corrupt(idx, "not a Megatron index file (bad header)")
    _, version, code, sequences, documents = _FIXED.unpack(fixed)
    if version != 1:
        raise corrupt(idx, f"index version {version}, expected 1")
    try:
        itemsize = DType.size(DType.dtype_from_code(code))
    except (KeyError, ValueError):
        raise corrupt(idx, f"unknown token dtype code {code}") from None
    if documents < 1 or documents > sequences + 1:
        raise corrupt(idx, f"{documents} document indices for {sequences} sequences")
    arrays = sequences * (4 + 8) + documents * 8
    if idx_size not in (_FIXED.size + arrays, _FIXED.size + arrays + sequences):
        raise corrupt(idx, f"{idx_size} bytes, but its header ({sequences} sequences, "
                           f"{documents} document indices) needs {_FIXED.size + arrays}: "
                           "truncated or overwritten")
    if sequences == 0:
        return 0
    index = numpy.memmap(idx, mode="r", offset=_FIXED.size, dtype=numpy.uint8,
                         shape=(arrays,))
    last_length = int(index[4 * (sequences - 1):4 * sequences].view(numpy.int32)[0])
    pointers = index[4 * sequences:12 * sequences].view(numpy.int64)
    document_indices = index[12 * sequences:].view(numpy.int64)
    if pointers[0] != 0 or document_indices[0] != 0 or document_indices[-1] != sequences:
        raise corrupt(idx, "its sequence pointers or document indices do not start at 0 and "
                           "end at the sequence count")
    expected_bin = int(pointers[-1]) + last_length * itemsize
    if bin_.stat().st_size != expected_bin:
        raise corrupt(bin_, f"{bin_.stat().st_size} bytes, but {idx.name} indexes "
                            f"{expected_bin}: truncated, or not the pair of this index")
    return sequences


def check_split_documents(prefix: str, sequences: int, split: str) -> None:
    """Every split --split gives a weight must receive a document of this dataset: Megatron's
    GPTDataset builds an empty split's indices by adding epochs until they hold the tokens it
    needs, which an empty epoch never does, so the launch would spin forever without a word
    (even for a split no sample is drawn from). The bounds are Megatron's own arithmetic."""
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    empty = [name for name, bounds in zip(("train", "validation", "test"), matrix)
             if bounds is not None
             and int(round(bounds[0] * float(sequences))) == int(round(bounds[1] * float(sequences)))]
    if empty:
        raise ValueError(
            f"--split {split}: the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} of "
            f"--data-path {prefix} get{'' if len(empty) > 1 else 's'} none of its {sequences} "
            "documents; give such a split weight 0 (e.g. --split 98,2,0) or use a corpus of more "
            "documents")
