"""Row-aligned chunking of tensors.

A tensor larger than ``CHUNK_BYTES`` is cut into chunks of whole rows (slices along the first
dimension), so that changing a few rows — or appending rows, as a vocabulary extension of the
embedding matrix does — changes only the chunks that hold them. The cut points depend only on
dtype and shape, so equal tensors always give equal chunks and equal ids. A single row larger
than a chunk is cut at element boundaries instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

__all__ = ["CHUNK_BYTES", "Chunk", "chunk_layout"]

# 4 MiB: small enough that a few changed rows cost little, large enough that per-object
# overhead (a file, an fsync, a header) stays below 0.1% of the data.
CHUNK_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    start: int  # byte offset in the tensor's data
    stop: int  # byte offset one past the end
    shape: tuple[int, ...]  # shape of the chunk as a tensor of its own


def chunk_layout(itemsize: int, shape: tuple[int, ...], target: int = CHUNK_BYTES) -> list[Chunk]:
    """Return the chunks of a tensor of ``shape`` with ``itemsize``-byte elements.

    A tensor that fits in ``target`` bytes (including 0-d and empty tensors) is one chunk with the
    tensor's own shape.
    """
    nbytes = prod(shape) * itemsize
    if nbytes <= target or not shape:
        return [Chunk(0, nbytes, tuple(shape))]
    row_elems = prod(shape[1:])
    row_bytes = row_elems * itemsize
    if row_bytes <= target:
        rows_per_chunk = target // row_bytes
        chunks = []
        for row in range(0, shape[0], rows_per_chunk):
            rows = min(rows_per_chunk, shape[0] - row)
            chunks.append(Chunk(row * row_bytes, (row + rows) * row_bytes, (rows, *shape[1:])))
        return chunks
    elems_per_chunk = max(1, target // itemsize)
    total = prod(shape)
    return [
        Chunk(e * itemsize, min(e + elems_per_chunk, total) * itemsize,
              (min(elems_per_chunk, total - e),))
        for e in range(0, total, elems_per_chunk)
    ]
