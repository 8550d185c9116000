"""The on-disk layout of one object (spec).

    offset  size  field
    0       4     magic b"MGO1"
    4       1     encoding code (see encodings.BY_CODE)
    5       1     delta chain depth (0 for standalone objects)
    6       2     meta length M (u16, little-endian)
    8       8     raw length: bytes of the decoded content (u64, little-endian)
    16      M     meta: ASCII "<DTYPE> <shape>[ sumsq=<float>]", e.g. "F32 [1820,384] sumsq=0.52"
    16+M    32    parent id (binary), only for delta encodings
    ...           payload (the encoding's bytes)

``sumsq`` (optional, float dtypes) is the sum of the squared elements, recorded when the object
is written so that diffs can report norms without decoding unchanged chunks. It is a hint, not
part of the id: a reader that does not need it ignores it.

A reader MUST reject a wrong magic, an unknown encoding code, a meta that does not parse, a
truncated header and, after decoding, content whose id differs from the object's key.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .encodings import BY_CODE, Encoding
from .ids import format_shape, parse_shape

__all__ = ["ObjectHeader", "pack_header", "unpack_header"]

MAGIC = b"MGO1"
_FIXED = struct.Struct("<4sBBHQ")


@dataclass(frozen=True)
class ObjectHeader:
    encoding: Encoding
    depth: int
    dtype: str
    shape: tuple[int, ...]
    raw_len: int
    parent: str | None
    payload_offset: int
    sumsq: float | None = None


def pack_header(encoding: Encoding, depth: int, dtype: str, shape: tuple[int, ...],
                raw_len: int, parent: str | None, sumsq: float | None = None) -> bytes:
    """The bytes of an object that come before its payload."""
    meta_text = f"{dtype} {format_shape(shape)}"
    if sumsq is not None:
        meta_text += f" sumsq={sumsq!r}"
    meta = meta_text.encode("ascii")
    parts = [_FIXED.pack(MAGIC, encoding.code, depth, len(meta), raw_len), meta]
    if encoding.needs_parent:
        parts.append(bytes.fromhex(parent))
    return b"".join(parts)



def unpack_header(blob: bytes) -> ObjectHeader:
    """Parse an object's header. Raises ValueError with the reason on malformed input."""
    if len(blob) < _FIXED.size:
        raise ValueError(f"object is {len(blob)} bytes, shorter than its header")
    magic, code, depth, meta_len, raw_len = _FIXED.unpack_from(blob)
    if magic != MAGIC:
        raise ValueError(f"bad magic {magic!r}")
    if code not in BY_CODE:
        raise ValueError(f"unknown encoding code {code}")
    encoding = BY_CODE[code]
    end = _FIXED.size + meta_len
    if len(blob) < end:
        raise ValueError("object truncated inside its meta")
    try:
        dtype, shape_text, *extra = blob[_FIXED.size:end].decode("ascii").split(" ")
        shape = parse_shape(shape_text)
        hints = dict(item.split("=", 1) for item in extra)
        sumsq = float(hints["sumsq"]) if "sumsq" in hints else None
    except ValueError as exc:
        raise ValueError(f"bad meta: {exc}") from None
    parent = None
    if encoding.needs_parent:
        if len(blob) < end + 32:
            raise ValueError("object truncated inside its parent id")
        parent = blob[end:end + 32].hex()
        end += 32
    return ObjectHeader(encoding, depth, dtype, shape, raw_len, parent, end, sumsq)
