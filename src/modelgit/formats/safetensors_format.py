"""safetensors files, parsed and validated by modelgit itself.

The header is kept verbatim (as a blob in the manifest), so a file rebuilt from the store is the
original byte for byte, padding, key order and ``__metadata__`` included. Parsing follows the
safetensors spec and refuses everything the reference loader refuses, with a message that says
which file and which tensor is wrong:

* the 8-byte little-endian header length N MUST leave room in the file and MUST NOT exceed
  ``MAX_HEADER_BYTES`` (100 MB, the reference limit);
* the header MUST be a UTF-8 JSON object nested at most 8 levels deep, without duplicate keys or
  non-finite numbers (``NaN``, ``Infinity``), whose values are tensor
  descriptions ``{"dtype", "shape", "data_offsets"}`` except the optional ``__metadata__``
  (a string-to-string map);
* every dtype MUST be known, every shape a list of non-negative integers, every
  ``data_offsets`` a pair ``[begin, end]`` with ``end - begin`` equal to the tensor's byte size;
* the byte buffer MUST be covered exactly: sorted by offset the tensors start at 0, touch without
  overlap or hole, and end at the end of the file.
"""

from __future__ import annotations

import json
import struct

from .._reading import SourceFile
from ..dtypes import DTYPES
from ..errors import FormatError
from ..untrusted import loads_json
from .base import Format, TensorEntry, iter_pieces

__all__ = ["FORMAT", "parse_header", "open_safetensors", "write_safetensors", "stream_safetensors",
           "read_header_from_stream", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 100_000_000
#: a header nests 3 levels (tensors, a description, its shape); more is refused before parsing
MAX_HEADER_DEPTH = 8
METADATA_KEY = "__metadata__"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_header(header: bytes, data_len: int | None, where: str = "safetensors file"
                 ) -> list[tuple[TensorEntry, int, int]]:
    """Validate a safetensors header; return (entry, begin, end) sorted by data offset.

    Args:
        header: the JSON header bytes (without the 8-byte length prefix).
        data_len: the size of the byte buffer that follows the header; None when reading a
            stream whose length is not known yet (the caller then checks that the stream ends
            where the last tensor does).
        where: the file name, for messages.

    Raises:
        FormatError: naming the file, the tensor and the rule it breaks.
    """
    def bad(why: str) -> FormatError:
        return FormatError(f"{where}: {why}; the file is not a valid safetensors file "
                           "(re-export or re-download it)")

    try:  # strict: size and depth limits, no NaN/Infinity, no duplicate keys
        parsed = loads_json(header, "header", MAX_HEADER_BYTES, MAX_HEADER_DEPTH)
    except FormatError as exc:
        raise bad(f"header is not valid UTF-8 JSON ({str(exc).removeprefix('header: ')})") from None
    if not isinstance(parsed, dict):
        raise bad("header is not a JSON object")
    items = []
    for name, desc in parsed.items():
        if name == METADATA_KEY:
            if not isinstance(desc, dict) or not all(isinstance(v, str) for v in desc.values()):
                raise bad("__metadata__ must map strings to strings")
            continue
        if not isinstance(desc, dict) or set(desc) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {name!r} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = desc["dtype"], desc["shape"], desc["data_offsets"]
        if dtype not in DTYPES:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r} "
                      f"(known: {', '.join(sorted(DTYPES))})")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"tensor {name!r} has invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) and o >= 0 for o in offsets)):
            raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        entry = TensorEntry(name, dtype, tuple(shape))
        if end < begin or end - begin != entry.nbytes:
            raise bad(f"tensor {name!r} data_offsets {offsets} span {end - begin} bytes but "
                      f"{dtype} {shape} needs {entry.nbytes}")
        if data_len is not None and end > data_len:
            raise bad(f"tensor {name!r} data_offsets {offsets} run past the end of the data "
                      f"({data_len} bytes): the file is truncated or the header is wrong")
        items.append((entry, begin, end))
    items.sort(key=lambda item: (item[1], item[2]))
    position = 0
    for entry, begin, end in items:
        if begin != position:
            kind = "overlaps the previous tensor" if begin < position else "leaves a hole"
            raise bad(f"tensor {entry.name!r} at offset {begin} {kind} (expected {position})")
        position = end
    if data_len is not None and position != data_len:
        raise bad(f"tensors cover {position} bytes of data but the file holds {data_len}")
    return items


class SafetensorsReader:
    """An open safetensors file: the header parsed, tensors read on demand with ``pread``.

    The file is never memory-mapped: bytes land in buffers of this process, so a file truncated
    or rewritten meanwhile gives a :class:`~modelgit.errors.FileChangedError` (see
    :mod:`modelgit._reading`), never ``SIGBUS`` or bytes that change after they were read.

    Args:
        source: a path, or a :class:`~modelgit._reading.SourceFile` already open (not closed by
            :meth:`close` then).
    """

    format = "safetensors"

    def __init__(self, source: "str | SourceFile"):
        self._own = not isinstance(source, SourceFile)
        self._source = SourceFile(source) if self._own else source
        self.path = path = self._source.path
        try:
            size = self._source.size
            prefix = self._source.read(0, 8)
            if len(prefix) < 8:
                raise FormatError(f"{path}: file is {size} bytes, too short for a safetensors "
                                  "header (truncated?)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise FormatError(f"{path}: header length {header_len} exceeds the "
                                  f"{MAX_HEADER_BYTES}-byte limit (corrupt or not safetensors)")
            if 8 + header_len > size:
                raise FormatError(f"{path}: header length {header_len} runs past the end of the "
                                  f"{size}-byte file (truncated?)")
            self._header = self._source.read(8, header_len)
            self._data_start = 8 + header_len
            items = parse_header(self._header, size - self._data_start, path)
            self._entries = [entry for entry, _, _ in items]
            self._offsets = {entry.name: (begin, end) for entry, begin, end in items}
        except BaseException:
            self.close()
            raise

    def entries(self) -> list[TensorEntry]:
        return list(self._entries)

    def read_into(self, name: str, start: int, out) -> None:
        """Fill ``out`` with the bytes of tensor ``name`` from byte ``start`` of its data.

        Raises:
            FileChangedError: the file was truncated meanwhile.
        """
        begin, end = self._offsets[name]
        length = memoryview(out).nbytes
        if start < 0 or begin + start + length > end:
            raise ValueError(f"bytes [{start}, {start + length}) are outside tensor {name!r} "
                             f"({end - begin} bytes)")
        self._source.read_into(self._data_start + begin + start, out)

    def data(self, name: str):
        """All the bytes of tensor ``name``, read now into memory of this process."""
        import numpy as np

        begin, end = self._offsets[name]
        out = np.empty(end - begin, dtype=np.uint8)
        self.read_into(name, 0, out)
        return memoryview(out)

    def meta(self) -> dict[str, bytes]:
        return {"header": self._header}

    def check_unchanged(self) -> None:
        """Raise FileChangedError when the file changed since it was opened."""
        self._source.check_unchanged()

    def close(self) -> None:
        if self._own:
            self._source.close()


def open_safetensors(source: "str | SourceFile") -> SafetensorsReader:
    return SafetensorsReader(source)


def write_safetensors(path: str, meta: dict[str, bytes], entries: list[TensorEntry], read) -> None:
    """Write a safetensors file from its original header and the tensors' bytes.

    With ``meta["header"]`` the header is reused verbatim, which reproduces the original file
    byte for byte; without it a canonical header is built (sorted names, no padding).

    Raises:
        FormatError: when the header and the tensor list disagree.
    """
    with open(path, "wb") as out:
        for piece in stream_safetensors(meta, entries, read, path):
            out.write(piece)


def layout_safetensors(meta: dict[str, bytes], entries: list[TensorEntry],
                       where: str = "safetensors file") -> tuple[bytes, list[tuple[TensorEntry, int]]]:
    """The bytes before the first tensor (length and header), and each tensor with the file
    offset of its first byte, in file order (see :func:`write_safetensors` for the header).

    Raises:
        FormatError: when the header and the tensor list disagree.
    """
    header = meta.get("header")
    if header is None:
        header = _canonical_header(entries)
    total = sum(entry.nbytes for entry in entries)
    items = parse_header(header, total, where)
    by_name = {entry.name: entry for entry in entries}
    if sorted(by_name) != sorted(entry.name for entry, _, _ in items) or any(
            by_name[entry.name] != entry for entry, _, _ in items):
        raise FormatError(f"{where}: the stored header does not describe the manifest's tensors "
                          "(the manifest was edited by hand?)")
    prefix = struct.pack("<Q", len(header)) + header
    return prefix, [(by_name[entry.name], len(prefix) + begin) for entry, begin, _ in items]


def stream_safetensors(meta: dict[str, bytes], entries: list[TensorEntry], read,
                       where: str = "safetensors file"):
    """The bytes of the safetensors file, in pieces (see :func:`write_safetensors`)."""
    prefix, placed = layout_safetensors(meta, entries, where)
    yield prefix
    for entry, _ in placed:
        yield from iter_pieces(read, entry)


def _canonical_header(entries: list[TensorEntry]) -> bytes:
    header, offset = {}, 0
    for entry in sorted(entries, key=lambda e: e.name):
        header[entry.name] = {"dtype": entry.dtype, "shape": list(entry.shape),
                              "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    return json.dumps(header, separators=(",", ":")).encode()


def read_header_from_stream(stream, where: str) -> tuple[bytes, list[tuple[TensorEntry, int, int]]]:
    """Read and validate the length prefix and header from a stream with ``read(n)``.

    The data length is not known in a stream: the caller must check that the data ends exactly
    where the last tensor does.
    """
    prefix = stream.read(8)
    if len(prefix) < 8:
        raise FormatError(f"{where}: only {len(prefix)} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES:
        raise FormatError(f"{where}: header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte "
                          "limit (corrupt or not safetensors)")
    header = stream.read(header_len)
    if len(header) < header_len:
        raise FormatError(f"{where}: header length {header_len} runs past the end of the data "
                          "(truncated?)")
    return header, parse_header(header, None, where)


def sniff_safetensors(path: str) -> bool:
    return path.endswith(".safetensors")


FORMAT = Format("safetensors", open_safetensors, write_safetensors, sniff_safetensors,
                stream_safetensors, layout_safetensors)
