"""The delta codecs of the store side by side, in process, on the versions of ``store.py``.

For every float tensor of a version and its parent, chunk by chunk as the store cuts them, this
encodes the child as ``delta`` (byte planes + zstd: what the store wrote for every dtype before
``delta16``) and as the store now chooses (:func:`modelgit.store.encodings.encode_best_delta`:
``delta16`` for bf16 and fp16 when smaller), decodes both back (checked byte for byte), and sums
payload bytes and CPU seconds of each. Headers (~100 bytes an object) are not counted; the
stored figures of ``store.py`` (from ``modelgit stats``) include them.
"""

from __future__ import annotations

import math
import time

import numpy as np

from modelgit.dtypes import DTYPES
from modelgit.store.chunking import chunk_layout
from modelgit.store.encodings import encode_best_delta, encode_delta, ENCODINGS


def compare(parent_file, child_file, spec, dtype: str, storage_dtype) -> dict:
    """Payload bytes and encode / decode CPU-s of ``delta`` alone and of the store's choice.

    Args:
        parent_file, child_file: ``SafetensorsFile`` of the two versions.
        spec: (name, shape, kind) of every tensor.
        storage_dtype: (kind, dtype) -> the tensor's stored dtype.
    Returns:
        {"delta": {...}, "chosen": {...}, "by_encoding": {name: chunks}}, each with
        ``bytes``, ``encode_cpu_s``, ``decode_cpu_s``; and ``raw_bytes``.
    """
    out = {"delta": _zero(), "chosen": _zero(), "by_encoding": {}, "raw_bytes": 0}
    for name, shape, kind in spec:
        sdtype = storage_dtype(kind, dtype)
        if kind == "int" or math.prod(shape) == 0:
            continue
        itemsize = DTYPES[sdtype].itemsize
        parent = np.ascontiguousarray(parent_file.flat(name)).view(np.uint8)
        child = np.ascontiguousarray(child_file.flat(name)).view(np.uint8)
        for chunk in chunk_layout(itemsize, tuple(shape)):
            p, c = parent[chunk.start:chunk.stop], child[chunk.start:chunk.stop]
            out["raw_bytes"] += len(c)
            t = time.process_time()
            payload = encode_delta(c, itemsize, p)
            _add(out["delta"], len(payload), time.process_time() - t,
                 _decode_cpu(ENCODINGS["delta"], payload, itemsize, p, c))
            t = time.process_time()
            encoding, payload = encode_best_delta(c, sdtype, itemsize, p)
            _add(out["chosen"], len(payload), time.process_time() - t,
                 _decode_cpu(encoding, payload, itemsize, p, c))
            out["by_encoding"][encoding.name] = out["by_encoding"].get(encoding.name, 0) + 1
    return out


def _zero() -> dict:
    return {"bytes": 0, "encode_cpu_s": 0.0, "decode_cpu_s": 0.0}


def _add(acc: dict, size: int, encode_s: float, decode_s: float) -> None:
    acc["bytes"] += size
    acc["encode_cpu_s"] += encode_s
    acc["decode_cpu_s"] += decode_s


def _decode_cpu(encoding, payload, itemsize, parent, child) -> float:
    t = time.process_time()
    back = encoding.decode(payload, itemsize, len(child), parent)
    spent = time.process_time() - t
    if bytes(back) != child.tobytes():
        raise RuntimeError(f"{encoding.name} did not decode to the bytes it encoded")
    return spent
