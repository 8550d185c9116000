"""Lossless encodings of object payloads, in a registry keyed by name and wire code.

Each encoding is a pair of pure functions. ``encode(raw, itemsize, parent)`` returns the payload
bytes; ``decode(payload, itemsize, raw_len, parent)`` returns the raw content as a bytes-like
(``bytes`` or a flat uint8 numpy array, which saves a copy). ``parent`` is the
raw content of the delta parent for delta encodings and ``None`` otherwise. Decoding is always
followed by an id check in the store, so a wrong decoder cannot go unnoticed.

Encodings:

* ``raw``    — the bytes as they are (incompressible data costs nothing to read).
* ``zstd``   — zstandard.
* ``planes`` — byte-plane split, then zstd: byte k of every element is stored together, so the
  low-entropy sign/exponent bytes of floats compress and the mantissa bytes do not pollute them.
* ``delta``  — against a parent object of equal size: the difference of the bit patterns as
  unsigned integers (mod 2^bits), zig-zag mapped so small changes either way become small
  numbers, then byte planes + zstd. Integer difference of IEEE bit patterns is monotone within a
  sign, so a small numerical change is a small integer whatever the exponent.
* ``delta16`` — against a parent of equal size, for bf16 and fp16: the update entropy-coded
  (rANS) per exponent of the parent, see :mod:`modelgit.store.half_codec`. Chosen by
  :func:`encode_best_delta` when smaller than ``delta``, which it is on sparse fine-tune updates.
"""

from __future__ import annotations

import math

import threading
from dataclasses import dataclass
from typing import Callable

import zstandard

__all__ = ["Encoding", "ENCODINGS", "BY_CODE", "register", "encode_standalone", "encode_delta",
           "encode_best_delta", "delta_parent_content", "zstd_decompress_bounded"]

ZSTD_LEVEL = 1  # entropy coding does the work on weights; higher levels only cost time
_local = threading.local()


def _np():
    # numpy costs ~0.1 s to import; the CLI should not pay it for commands that never encode
    import numpy

    return numpy


def _uint(itemsize: int):
    np = _np()
    return {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[itemsize]


def _uint_le(itemsize: int):
    """Little-endian unsigned words: byte k of an element is bits 8k..8k+7 on any host."""
    return _np().dtype(f"<u{itemsize}")


def _int(itemsize: int):
    np = _np()
    return {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}[itemsize]


@dataclass(frozen=True)
class Encoding:
    name: str
    code: int
    encode: Callable[..., bytes]
    decode: Callable[..., bytes]
    needs_parent: bool = False


ENCODINGS: dict[str, Encoding] = {}
BY_CODE: dict[int, Encoding] = {}


def register(encoding: Encoding) -> Encoding:
    """Add an encoding to the registry. Duplicate names or codes raise ValueError."""
    if encoding.name in ENCODINGS or encoding.code in BY_CODE:
        raise ValueError(f"encoding {encoding.name!r} (code {encoding.code}) is already registered")
    ENCODINGS[encoding.name] = encoding
    BY_CODE[encoding.code] = encoding
    return encoding


def _compressor() -> zstandard.ZstdCompressor:
    # zstandard objects are not thread-safe; one per thread.
    if not hasattr(_local, "cctx"):
        _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        _local.dctx = zstandard.ZstdDecompressor()
    return _local.cctx


# for byte planes (floats and their deltas): the gain there is entropy coding of the sign and
# exponent plane, not long matches, so the smallest hash table (64 entries) and long minimum
# matches find what level 1 finds, 2x faster (and within 2% of its size, often smaller: the
# exponent plane of N(0, 0.02) fp32 weights gives 0.340 of its size, 2.68 bits of entropy per
# byte bound it at 0.335; 1.6 ms per 4 MiB chunk against 2.8 ms with a 1024-entry table, the
# same size); any zstd frame decodes the same way, so objects written before decode as ever
_PLANE_PARAMS = zstandard.ZstdCompressionParameters(
    window_log=18, chain_log=6, hash_log=6, search_log=1, min_match=7, target_length=0,
    strategy=zstandard.STRATEGY_FAST)


def _plane_compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_local, "plane_cctx"):
        _local.plane_cctx = zstandard.ZstdCompressor(compression_params=_PLANE_PARAMS)
    return _local.plane_cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    _compressor()
    return _local.dctx


def zstd_decompress_bounded(data, limit: int,
                            dctx: zstandard.ZstdDecompressor | None = None) -> bytes:
    """One zstd frame decompressed to at most ``limit`` bytes.

    A frame's header may declare its content size, and the decompressor allocates that much
    before it reads a block (``max_output_size`` only bounds frames that declare none): one
    damaged or hostile byte there asked for 7.6e17 bytes, a MemoryError, and a declared size
    of a few GB would be allocated. So the declared size is checked first.

    Raises:
        ValueError: the header is malformed or declares more than ``limit`` bytes.
        zstandard.ZstdError: the frame's data does not decompress.
    """
    try:
        declared = zstandard.frame_content_size(data)  # -1: not declared
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd frame header is malformed: {exc}") from None
    if declared > limit:
        raise ValueError(f"zstd frame declares {declared} bytes, more than the {limit} expected")
    return (dctx or zstandard.ZstdDecompressor()).decompress(data, max_output_size=limit)


def _zstd_decode(payload, raw_len: int) -> bytes:
    out = zstd_decompress_bounded(payload, raw_len, _decompressor())
    if len(out) != raw_len:
        raise ValueError(f"zstd payload decoded to {len(out)} bytes, expected {raw_len}")
    return out


def _split_planes(raw, itemsize: int):
    """(elements, itemsize) -> (itemsize, elements): plane k holds byte k of every element.

    Plane k is the element shifted right by 8k bits and narrowed to a byte: numpy runs that as
    two contiguous passes, 1.7x faster than copying a strided byte column per plane."""
    np = _np()
    words = np.frombuffer(raw, dtype=_uint_le(itemsize))
    planes = np.empty((itemsize, words.shape[0]), dtype=np.uint8)
    planes[0] = words  # a narrowing copy keeps the low byte
    shifted = np.empty_like(words)
    for k in range(1, itemsize):
        np.right_shift(words, 8 * k, out=shifted)
        planes[k] = shifted
    return planes


def _join_planes(planes, itemsize: int):
    """Inverse of _split_planes; returns a flat uint8 array (no extra copy to bytes).

    Planes are joined pairwise into words twice as wide (low | high << bits) until one is left:
    every pass is contiguous and half of them are on narrow words, 1.4x faster than shifting
    each plane into the full-width element and 1.9x faster than strided byte columns."""
    np = _np()
    arr = np.frombuffer(planes, dtype=np.uint8).reshape(itemsize, -1)
    if itemsize == 1:
        return arr[0].copy()
    level, width = [arr[k] for k in range(itemsize)], 1  # low byte first
    while len(level) > 1:
        width *= 2
        joined = []
        for low, high in zip(level[0::2], level[1::2]):
            words = np.empty(arr.shape[1], dtype=_uint_le(width))
            np.copyto(words, high)
            np.left_shift(words, 4 * width, out=words)
            np.bitwise_or(words, low, out=words)
            joined.append(words)
        level = joined
    return level[0].view(np.uint8)


def _raw_encode(raw, itemsize, parent=None) -> bytes:
    return bytes(raw)


def _raw_decode(payload, itemsize, raw_len, parent=None) -> bytes:
    if len(payload) != raw_len:
        raise ValueError(f"raw payload has {len(payload)} bytes, expected {raw_len}")
    return bytes(payload)


def _zstd_encode(raw, itemsize, parent=None) -> bytes:
    return _compressor().compress(raw)


def _zstd_decode_any(payload, itemsize, raw_len, parent=None) -> bytes:
    return _zstd_decode(payload, raw_len)


def _planes_encode(raw, itemsize, parent=None) -> bytes:
    return _plane_compressor().compress(_split_planes(raw, itemsize))


def _planes_decode(payload, itemsize, raw_len, parent=None) -> bytes:
    return _join_planes(_zstd_decode(payload, raw_len), itemsize)


def _zigzag_delta(raw, parent, itemsize: int):
    np = _np()
    unsigned = _uint(itemsize)
    diff = np.subtract(np.frombuffer(raw, dtype=unsigned), np.frombuffer(parent, dtype=unsigned))
    sign = np.right_shift(diff.view(_int(itemsize)), 8 * itemsize - 1)  # 0, or -1 if negative
    # zig-zag (0,-1,1,-2,... -> 0,1,2,3,...) in place: one temporary besides the result
    np.left_shift(diff, 1, out=diff)
    np.bitwise_xor(diff, sign.view(unsigned), out=diff)
    return diff


def _delta_encode(raw, itemsize, parent) -> bytes:
    if len(parent) != len(raw):
        raise ValueError("delta parent differs in size")
    zz = _zigzag_delta(raw, parent, itemsize)
    if itemsize == 1:
        return _compressor().compress(zz)
    return _plane_compressor().compress(_split_planes(zz, itemsize))


def _delta_difference(payload, itemsize, raw_len):
    """The difference (content - parent, mod 2^bits) a delta payload holds, as unsigned words."""
    np = _np()
    planes = _zstd_decode(payload, raw_len)
    if itemsize == 1:
        zz = np.frombuffer(planes, dtype=np.uint8).copy()
    else:
        zz = _join_planes(planes, itemsize).view(_uint(itemsize))  # a fresh array: reused below
    # undo the zig-zag in place (no temporaries of the chunk's size but one)
    sign = np.bitwise_and(zz, 1, dtype=zz.dtype)
    np.subtract(0, sign, out=sign)  # all ones where the difference was negative
    np.right_shift(zz, 1, out=zz)
    np.bitwise_xor(zz, sign, out=zz)
    return zz


def _delta_decode(payload, itemsize, raw_len, parent):
    np = _np()
    if parent is None or len(parent) != raw_len:
        raise ValueError("delta object decoded without a parent of its size")
    diff = _delta_difference(payload, itemsize, raw_len)
    np.add(diff, np.frombuffer(parent, dtype=diff.dtype), out=diff)
    return diff.view(np.uint8)


def delta_parent_content(payload, itemsize: int, raw_len: int, content):
    """The content of a delta object's *parent*, from the object's own content and payload.

    A delta stores ``content - parent``; with the content known, the parent is
    ``content - difference``. A remote kept newest-whole stores an old version as a delta
    against its successor: a store that has the old version gets the new one from that small
    delta instead of the new version whole. The result is checked against the parent's id by
    the caller, like any decoded content.

    Raises:
        ValueError: the payload does not decode, or ``content`` has the wrong size.
    """
    np = _np()
    if len(content) != raw_len or raw_len % itemsize:
        raise ValueError("delta content of the wrong size")
    try:
        diff = _delta_difference(payload, itemsize, raw_len)
    except Exception as exc:  # any decoder failure on bad bytes is corruption
        raise ValueError(f"delta payload does not decode: {exc}") from None
    np.subtract(np.frombuffer(content, dtype=diff.dtype), diff, out=diff)
    return diff.view(np.uint8)


RAW = register(Encoding("raw", 0, _raw_encode, _raw_decode))
ZSTD = register(Encoding("zstd", 1, _zstd_encode, _zstd_decode_any))
PLANES = register(Encoding("planes", 2, _planes_encode, _planes_decode))
DELTA = register(Encoding("delta", 3, _delta_encode, _delta_decode, needs_parent=True))


def _half_module():
    from . import half_codec  # numpy-heavy, like the other codecs: imported when first used

    return half_codec


def _delta16_encode(raw, itemsize, parent, mantissa_bits: int = 7) -> bytes:
    if itemsize != 2:
        raise ValueError(f"delta16 codes 2-byte elements, not {itemsize}-byte ones")
    return _half_module().encode(raw, parent, mantissa_bits)


def _delta16_decode(payload, itemsize, raw_len, parent):
    if itemsize != 2 or parent is None or len(parent) != raw_len:
        raise ValueError("delta16 object decoded without a 2-byte parent of its size")
    return _half_module().decode(payload, parent)


DELTA16 = register(Encoding("delta16", 4, _delta16_encode, _delta16_decode, needs_parent=True))
#: the store format of a store that may hold delta16 objects: older modelgit refuses to open it
DELTA16_FORMAT = 3

# A compressed form is kept only when it saves at least this fraction (else reads pay for nothing).
MIN_SAVING = 0.03
# A delta is kept only when it is this much smaller than the best standalone form: a chain costs
# a parent read on every checkout.
DELTA_ADVANTAGE = 0.9


def encode_standalone(raw, itemsize: int, is_float: bool) -> tuple[Encoding, bytes]:
    """Pick the smallest of raw / zstd / planes for ``raw`` and return (encoding, payload)."""
    if len(raw) < 64:
        return RAW, bytes(raw)
    candidate = PLANES if (is_float and itemsize > 1) else ZSTD
    payload = candidate.encode(raw, itemsize)
    if len(payload) <= len(raw) * (1 - MIN_SAVING):
        return candidate, payload
    return RAW, bytes(raw)


def sum_of_squares(raw, dtype: str) -> float | None:
    """Sum of the squared elements of float content (None for other dtypes): a cheap statistic
    recorded with each object so that diffs need not decode unchanged chunks."""
    np = _np()
    if dtype == "F32":
        values = np.frombuffer(raw, dtype="<f4")
    elif dtype == "F64":
        values = np.frombuffer(raw, dtype="<f8")
    elif dtype == "F16":
        values = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    elif dtype == "BF16":
        values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        return None
    if values.size == 0:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        # BLAS in the values' own precision: float32 accumulation is precise enough for a norm
        total = float(np.dot(values, values))
        if not math.isfinite(total):
            # squares of large values (|x| > ~1.8e19 in float32) overflow: again in float64,
            # scaled by the largest magnitude so that float64 data cannot overflow either
            wide = values.astype(np.float64)
            scale = float(np.max(np.abs(wide)))
            if not math.isfinite(scale):
                return None  # inf or NaN in the data: no hint (a diff decodes and sees them)
            wide /= scale
            total = float(np.dot(wide, wide)) * scale * scale
    # a sum beyond float64's range has no hint either; the diff computes it from the values
    return total if math.isfinite(total) else None


def encode_best_delta(raw, dtype: str, itemsize: int, parent) -> tuple[Encoding, bytes] | None:
    """``delta`` or, for bf16 and fp16 where it is at least 5% smaller, ``delta16`` of ``raw``
    against ``parent``, as (encoding, payload); None when sizes differ. Other dtypes get ``delta``
    exactly as :func:`encode_delta` makes it."""
    payload = encode_delta(raw, itemsize, parent)
    if payload is None:
        return None
    mantissa_bits = _HALF_MANTISSA_BITS.get(dtype)
    if mantissa_bits is not None and itemsize == 2 and len(raw) >= _DELTA16_MIN_BYTES \
            and len(payload) <= _DELTA16_TRY * len(raw):
        half = DELTA16.encode(raw, itemsize, parent, mantissa_bits)
        if len(half) <= _DELTA16_GAIN * len(payload):
            return DELTA16, half
    return DELTA, payload


# mantissa bits of the 16-bit float dtypes (bf16 has 8 exponent bits, fp16 has 5): the parent's
# exponent is the context delta16 codes an element in
_HALF_MANTISSA_BITS = {"BF16": 7, "F16": 10}
# below this, delta16's header (tables, lane states) costs more than it can save
_DELTA16_MIN_BYTES = 512
# delta16 is tried only where delta already halves the chunk (an update of it, as a fine-tune
# makes): on unrelated content (a tensor trained anew) it costs 20-100x delta's time to be
# about as large, and the store keeps the standalone encoding there anyway
_DELTA16_TRY = 0.5
# delta16 is kept only where it saves at least 5% of delta: it decodes 20-60x slower (numpy rANS
# against zstd), which a dense fp16 update (1-2 last places, where delta's byte planes are
# already within 1.03x of the bound) would pay on every checkout for a fraction of a percent
_DELTA16_GAIN = 0.95


def encode_delta(raw, itemsize: int, parent) -> bytes | None:
    """Delta payload of ``raw`` against ``parent``, or None when sizes differ."""
    if len(parent) != len(raw) or len(raw) % itemsize:
        return None
    return DELTA.encode(raw, itemsize, parent)
