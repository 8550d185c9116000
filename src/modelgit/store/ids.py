"""Object ids: a hash of an object's decoded content (dtype, shape, bytes).

The id never depends on how an object is encoded or which file held it, so the same tensor is
stored once. BLAKE3 is used because it hashes at several GB/s on one core, well above what a disk
delivers, which keeps hashing off the critical path of ``add``.
"""

from __future__ import annotations

import re

import blake3

__all__ = ["object_id", "object_hasher", "is_object_id", "format_shape", "parse_shape", "ID_HEX_LEN"]

ID_HEX_LEN = 64
_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_DOMAIN = b"modelgit-object-v1\0"


def format_shape(shape: tuple[int, ...]) -> str:
    """Canonical text of a shape: ``[30522,384]``; ``[]`` for a 0-d tensor."""
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def parse_shape(text: str) -> tuple[int, ...]:
    """Inverse of :func:`format_shape`. Raises ValueError on anything else."""
    if not (text.startswith("[") and text.endswith("]")):
        raise ValueError(f"shape {text!r} is not of the form [d0,d1,...]")
    body = text[1:-1]
    if not body:
        return ()
    dims = []
    for part in body.split(","):
        if not part.isdigit() or (len(part) > 1 and part[0] == "0"):
            raise ValueError(f"shape {text!r} has a non-canonical dimension {part!r}")
        dims.append(int(part))
    return tuple(dims)


def object_hasher(dtype: str, shape: tuple[int, ...]):
    """A blake3 hasher that gives :func:`object_id` once fed the content's bytes (in pieces,
    in order) and asked for its ``hexdigest()``."""
    hasher = blake3.blake3(_DOMAIN)
    hasher.update(f"{dtype}\0{format_shape(shape)}\0".encode("ascii"))
    return hasher


def object_id(dtype: str, shape: tuple[int, ...], data) -> str:
    """Return the hex id of content ``data`` (bytes-like) with element type and shape.

    Args:
        dtype: safetensors dtype name, e.g. ``"F32"``; ``"U8"`` for plain byte blobs.
        shape: the shape the bytes have.
        data: the raw little-endian bytes (any buffer; not copied).
    """
    hasher = object_hasher(dtype, shape)
    hasher.update(data)
    return hasher.hexdigest()


def is_object_id(text: str) -> bool:
    return bool(_ID_RE.match(text))
