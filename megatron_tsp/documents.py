"""Packed documents: the pieces of each document that one zigzag query chunk attends with.

Megatron's --reset-attention-mask: a document ends with (and includes) an EOD token, and a token
attends only to earlier tokens of its own document. Legend: S sequence length, c = S / 2D chunk
length, b micro-batch, a the first global index of a query chunk.

The queries of a chunk [a, a + c) split into segments, one per document they belong to.
Segment j, queries [a + q_j, a + q_{j+1}), attends keys [its document's start, a + q_{j+1})
causally (lower-right aligned: the last query sees the last key). The key ranges of consecutive
segments abut, so a chunk is two offset arrays, over its queries and over the keys from the
first segment's document start: the cumulative sequence lengths of a variable-length flash
kernel, with no mask of any size.

The offsets are computed on the host from the tokens the data loader read on the host (as
Megatron's own packed-sequence path takes cu_seqlens from its dataset), so their sizes and
maximum lengths are known without reading anything back from the device; on a GPU they go to
the device once per micro-batch, in one non-blocking copy.
"""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy
import torch


@dataclass(frozen=True)
class ChunkSegments:
    """The document segments of one query chunk of one sample."""

    key_start: int
    """Global index of the first key any segment reads (the start of the first segment's
    document, at or before the chunk's start)."""
    q_offsets: Tuple[int, ...]
    """Segment boundaries over the chunk's queries: 0, ..., c."""
    k_offsets: Tuple[int, ...]
    """Segment boundaries over the keys from `key_start`: 0, ..., a + c - key_start."""
    cu_q: Optional[torch.Tensor] = None
    """`q_offsets` as int32 on the attention's device (None on the CPU, which reads the host
    offsets)."""
    cu_k: Optional[torch.Tensor] = None
    """`k_offsets` likewise."""

    @property
    def max_q(self) -> int:
        """The longest segment's queries: the varlen kernel's bound, known on the host."""
        return int(max(numpy.diff(self.q_offsets)))

    @property
    def max_k(self) -> int:
        return int(max(numpy.diff(self.k_offsets)))

    def segments(self):
        """(first query, end query) chunk-relative and (first key, end key) global, per
        segment."""
        for j in range(len(self.q_offsets) - 1):
            yield ((self.q_offsets[j], self.q_offsets[j + 1]),
                   (self.key_start + self.k_offsets[j], self.key_start + self.k_offsets[j + 1]))


@dataclass(frozen=True)
class PackedDocuments:
    """Where the documents of a micro-batch lie, for the local query chunks of one rank."""

    chunks: Tuple[Tuple[ChunkSegments, ...], ...]
    """[local chunk][sample] segments, local chunks in the rank's local order."""


def document_starts(tokens: numpy.ndarray, eod: int) -> numpy.ndarray:
    """tokens [S] -> the first index of every document, ascending from 0: the token after each
    EOD (an EOD in the last position starts nothing)."""
    after_eod = numpy.flatnonzero(tokens[:-1] == eod) + 1
    return numpy.concatenate([[0], after_eod]).astype(numpy.int64)


def _chunk_segments(starts: numpy.ndarray, first: int, length: int) -> Tuple[int, Tuple, Tuple]:
    """(key_start, q_offsets, k_offsets) of the query chunk [first, first + length)."""
    end = first + length
    key_start = int(starts[numpy.searchsorted(starts, first, side="right") - 1])
    inside = starts[(starts > first) & (starts < end)]
    bounds = numpy.concatenate([inside, [end]])
    q_offsets = (0, *(int(x) - first for x in bounds))
    k_offsets = (0, *(int(x) - key_start for x in bounds))
    return key_start, q_offsets, k_offsets


def packed_documents(tokens: Union[torch.Tensor, numpy.ndarray], eod: int,
                     chunks: Sequence[int], num_chunks: int,
                     device: torch.device) -> PackedDocuments:
    """tokens [b, S] on the host, a tensor or an array (the whole sequence of every sample);
    `chunks` the global indices of the query chunks of this rank, in local order, of
    `num_chunks` (2D) per sequence; the offsets made for attention on `device`."""
    if isinstance(tokens, torch.Tensor):
        if tokens.device.type != "cpu":
            raise ValueError("packed_documents reads the tokens on the host, where the data "
                             "loader made them: pass them before they are moved to the device")
        tokens = tokens.numpy()
    b, S = tokens.shape
    assert S % num_chunks == 0, (S, num_chunks)
    c = S // num_chunks
    tables = [[_chunk_segments(document_starts(tokens[i], eod), k * c, c) for i in range(b)]
              for k in chunks]
    if device.type == "cpu":
        return PackedDocuments(tuple(tuple(ChunkSegments(*t) for t in per_sample)
                                     for per_sample in tables))
    flat = [x for per_sample in tables for _, q, k in per_sample for x in (*q, *k)]
    host = torch.tensor(flat, dtype=torch.int32)
    if torch.cuda.is_available():
        host = host.pin_memory()
    offsets = host.to(device, non_blocking=True)
    out, at = [], 0
    for per_sample in tables:
        row = []
        for key_start, q, k in per_sample:
            cu_q, cu_k = offsets[at:at + len(q)], offsets[at + len(q):at + len(q) + len(k)]
            at += len(q) + len(k)
            row.append(ChunkSegments(key_start, q, k, cu_q, cu_k))
        out.append(tuple(row))
    return PackedDocuments(tuple(out))
