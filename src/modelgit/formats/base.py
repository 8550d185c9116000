"""The interface every checkpoint format implements, and the format registry.

A format is a module-level :class:`Format` with two functions:

* ``open(path_or_source) -> CheckpointReader``: lazy; reading a tensor touches only its bytes
  where the format allows. It takes a path or an open :class:`~modelgit._reading.SourceFile`
  (then every byte is read through that open file). Bytes are read into memory of this process
  (``pread``), never memory-mapped: a file changed meanwhile must give an error, not ``SIGBUS``
  or bytes that differ between two looks. Hostile input raises
  :class:`~modelgit.errors.FormatError` (or :class:`~modelgit.errors.UnsafeInputError`) naming
  the file and the problem.
* ``write(path, meta, tensors, read)``: writes ``path`` from the tensor list in file order,
  ``read(entry)`` yielding each tensor's raw bytes in pieces; ``meta`` is what the reader
  returned from :meth:`CheckpointReader.meta`, so a round trip rebuilds the file (byte for byte
  for safetensors, tensor for tensor otherwise). Writers write ``path`` directly; atomicity
  (temp file + fsync + rename) is the caller's job.

Tensor bytes are always raw little-endian in C order, the way safetensors lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Callable, Iterable, Iterator, Protocol

from ..dtypes import DTYPES

__all__ = ["TensorEntry", "CheckpointReader", "Format", "FORMATS", "register_format"]


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * DTYPES[self.dtype].itemsize


class CheckpointReader(Protocol):
    path: str
    format: str

    def entries(self) -> list[TensorEntry]:
        """The tensors in the order their bytes lie in the file."""

    def data(self, name: str):
        """Raw little-endian bytes of tensor ``name`` (a bytes-like in this process's memory)."""

    # optional: def read_into(self, name: str, start: int, out) -> None
    #     fill the buffer ``out`` with the tensor's bytes from byte ``start``; readers that have
    #     it are read chunk by chunk into reused buffers instead of a tensor at a time

    def meta(self) -> dict[str, bytes]:
        """Format-specific byte strings needed to rebuild the file (e.g. the safetensors header)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Format:
    name: str
    open: Callable[[str], CheckpointReader]
    write: Callable[[str, dict[str, bytes], list[TensorEntry],
                     Callable[[TensorEntry], Iterable[bytes]]], None]
    sniff: Callable[[str], bool]  # True when a file with this name/prefix is of this format
    # optional: the file's bytes in pieces from (meta, entries, read), for formats that can be
    # produced front to back (git smudge streams them to git without a temporary file)
    stream: Callable[..., Iterator[bytes]] | None = None
    # optional: (prefix, [(entry, offset)]) from (meta, entries, where), for formats whose file
    # is a prefix followed by every tensor's bytes whole at a fixed offset (written in parallel)
    layout: Callable[..., tuple[bytes, list[tuple[TensorEntry, int]]]] | None = None


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    if fmt.name in FORMATS:
        raise ValueError(f"format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


def iter_pieces(read: Callable[[TensorEntry], Iterable[bytes]], entry: TensorEntry) -> Iterator[bytes]:
    """Yield the pieces of one tensor, checking their total length."""
    total = 0
    for piece in read(entry):
        total += len(piece)
        yield piece
    if total != entry.nbytes:
        raise ValueError(f"tensor {entry.name!r} produced {total} bytes, expected {entry.nbytes}")


def fill_buffer(read: Callable[[TensorEntry], Iterable[bytes]], entry: TensorEntry, buf) -> None:
    """Copy the pieces of one tensor into ``buf`` (a flat uint8 numpy array of its size)."""
    import numpy as np

    offset = 0
    for piece in iter_pieces(read, entry):
        chunk = np.frombuffer(piece, dtype=np.uint8)
        if offset + chunk.size > entry.nbytes:
            raise ValueError(f"tensor {entry.name!r} produced more than {entry.nbytes} bytes")
        buf[offset:offset + chunk.size] = chunk
        offset += chunk.size
