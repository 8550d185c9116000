"""Helpers shared by tests: tiny seeded checkpoints written by hand."""

from __future__ import annotations

import json
import struct

import numpy as np


def write_safetensors(path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]],
                      metadata: dict[str, str] | None = None, pad: int = 0) -> bytes:
    """Write a safetensors file by hand (dtype name, shape, raw bytes); return the file bytes."""
    header, offset, blobs = {}, 0, []
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode() + b" " * pad
    data = struct.pack("<Q", len(text)) + text + b"".join(blobs)
    with open(path, "wb") as handle:
        handle.write(data)
    return data


def random_bytes(seed: int, n: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def float_weights(seed: int, shape, dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.02).astype(dtype)


def rewrite_derived_recipe(store, oid, change) -> None:
    """Rewrite the recipe of the derived object ``oid`` in ``store`` as a forger would: ``change``
    edits the parsed recipe in place; it is written back as canonical JSON under the same header."""
    from modelgit.store.derived import DERIVED
    from modelgit.store.objectfile import pack_header, unpack_header

    key = store._key(oid)
    blob = store.backend.read(key)
    head = unpack_header(blob)
    body = json.loads(blob[head.payload_offset:])
    change(body)
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    store.backend.write_atomic(key, pack_header(DERIVED, 0, head.dtype, head.shape, head.raw_len,
                                                None, head.sumsq) + payload)
