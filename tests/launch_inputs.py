"""What the launch tests give the launcher: a command line parsed and prepared as
pretrain_qwen3.py does it, and small Megatron indexed datasets."""

import numpy
import torch

from megatron_tsp.training.arguments import parse_tsp_args, prepare_args


def prepared_args(argv):
    """Megatron's args of `argv` after the launcher's own checks and defaults (ValueError naming
    the flag for what it refuses)."""
    argv = list(map(str, argv))
    args = parse_tsp_args(argv)
    prepare_args(args, argv)
    return args


def write_dataset(prefix, documents, high=4096, seed=0, bad_document=None):
    """A .bin/.idx pair of `documents` documents of 20-40 ids below `high`; bad_document holds the
    id 4000 at its 7th token. Returns the prefix."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    generator = torch.Generator().manual_seed(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.uint16)
    for document in range(documents):
        length = 20 + document % 21
        ids = torch.randint(0, high, (length,), generator=generator)
        if document == bad_document:
            ids[6] = 4000
        builder.add_document(ids, [length])
    builder.finalize(f"{prefix}.idx")
    return prefix
