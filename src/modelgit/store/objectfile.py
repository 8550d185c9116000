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
part of the id: a reader that does not need it ignores it. Other hints, each `` <name>=<value>``
(ASCII, no spaces), describe where the object sits in the store that holds it; the object stores
of remotes, kept "newest whole" (see :mod:`modelgit.git._layout`), write:

* ``older=<id>.<id>...``: the older versions stored as deltas that decode through this object,
  nearest first (the first is a delta on this one, the next a delta on the first...);
* ``below=<n>``: for a standalone object, how many deltas hang below it;
* ``plen=<n>``: the payload's length, so that a truncated copy shows in its size.

A reader that does not know a hint ignores it. Hints are never trusted for correctness: every
read is checked against the object's id.

A reader MUST reject a wrong magic, an unknown encoding code, a meta that does not parse, a
truncated header and, after decoding, content whose id differs from the object's key.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .encodings import BY_CODE, Encoding
from .ids import format_shape, parse_shape

__all__ = ["ObjectHeader", "pack_header", "unpack_header"]

MAGIC = b"MGO1"
_FIXED = struct.Struct("<4sBBHQ")
_WORD = re.compile(r"^[A-Za-z0-9_.+-]+$")


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
    hints: tuple[tuple[str, str], ...] = ()  # other ``name=value`` hints, in the order written

    def hint(self, name: str) -> str | None:
        """The value of hint ``name``, or None."""
        for key, value in self.hints:
            if key == name:
                return value
        return None


def pack_header(encoding: Encoding, depth: int, dtype: str, shape: tuple[int, ...],
                raw_len: int, parent: str | None, sumsq: float | None = None,
                hints: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The bytes of an object that come before its payload.

    Raises:
        ValueError: a hint's name or value is not a plain ASCII word.
    """
    meta_text = f"{dtype} {format_shape(shape)}"
    if sumsq is not None:
        meta_text += f" sumsq={sumsq!r}"
    for key, value in hints:
        if not (_WORD.match(key) and _WORD.match(value)) or key == "sumsq":
            raise ValueError(f"hint {key}={value} is not a plain ASCII name and value")
        meta_text += f" {key}={value}"
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
        pairs = [tuple(item.split("=", 1)) for item in extra]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError("a hint is not name=value")
        sumsq = next((float(v) for k, v in pairs if k == "sumsq"), None)
        hints = tuple((k, v) for k, v in pairs if k != "sumsq")
    except ValueError as exc:
        raise ValueError(f"bad meta: {exc}") from None
    parent = None
    if encoding.needs_parent:
        if len(blob) < end + 32:
            raise ValueError("object truncated inside its parent id")
        parent = blob[end:end + 32].hex()
        end += 32
    return ObjectHeader(encoding, depth, dtype, shape, raw_len, parent, end, sumsq, hints)
