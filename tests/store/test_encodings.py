import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from modelgit.store.encodings import ENCODINGS, encode_delta, encode_standalone

ITEMSIZES = [1, 2, 4, 8]


# a derived object's payload is a recipe computed by the store, not decoded: tests/store/test_derived.py
_CODECS = sorted(set(ENCODINGS) - {"derived"})


def test_every_registered_encoding_is_covered():
    assert set(_CODECS) == {"raw", "zstd", "planes", "delta", "delta16"}


@pytest.mark.parametrize("name", _CODECS)
@given(data=st.binary(max_size=4096), itemsize=st.sampled_from(ITEMSIZES), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_round_trip_is_lossless(name, data, itemsize, seed):
    enc = ENCODINGS[name]
    if name == "delta16":  # 16-bit floats only: tests/store/test_half_codec.py
        itemsize = 2
    data = data[: len(data) // itemsize * itemsize]
    parent = np.random.default_rng(seed).integers(0, 256, len(data), dtype=np.uint8).tobytes() \
        if enc.needs_parent else None
    payload = enc.encode(data, itemsize, parent)
    assert bytes(enc.decode(payload, itemsize, len(data), parent)) == data


def test_planes_beat_plain_zstd_on_float_weights():
    w = (np.random.default_rng(0).standard_normal(1 << 18) * 0.02).astype(np.float32).tobytes()
    enc, payload = encode_standalone(w, 4, is_float=True)
    assert enc.name == "planes"
    assert len(payload) < 0.9 * len(w)


def test_incompressible_data_is_stored_raw():
    data = np.random.default_rng(0).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    enc, payload = encode_standalone(data, 1, is_float=False)
    assert enc.name == "raw" and payload == data


def test_delta_of_small_update_is_small():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(1 << 18) * 0.02).astype(np.float32)
    w2 = w * (1 + np.float32(1e-3) * rng.standard_normal(w.size).astype(np.float32))
    payload = encode_delta(w2.tobytes(), 4, w.tobytes())
    assert len(payload) < 0.52 * w.nbytes


def test_delta_refuses_size_mismatch():
    assert encode_delta(b"\0" * 8, 4, b"\0" * 4) is None


@pytest.mark.parametrize("itemsize", ITEMSIZES)
def test_planes_layout_is_byte_k_of_every_element(itemsize):
    """The stored layout is fixed (objects written by earlier versions must decode): plane k is
    byte k, in little-endian order, of every element, whatever the host's byte order."""
    import zstandard

    raw = np.random.default_rng(itemsize).integers(0, 256, 64 * itemsize, dtype=np.uint8)
    payload = ENCODINGS["planes"].encode(raw.tobytes(), itemsize, None)
    planes = np.frombuffer(zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw.size),
                           dtype=np.uint8).reshape(itemsize, -1)
    assert (planes == raw.reshape(-1, itemsize).T).all()
    assert bytes(ENCODINGS["planes"].decode(payload, itemsize, raw.size, None)) == raw.tobytes()


@pytest.mark.parametrize("name", ["zstd", "planes", "delta"])
def test_a_frame_declaring_more_than_the_object_is_refused_before_any_allocation(name):
    """A zstd frame header may declare any content size, and the decompressor allocates what it
    declares: a forged header declaring 2**50 bytes must be a ValueError (corruption), not a
    MemoryError or a huge allocation."""
    import struct

    forged = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", 1 << 50) + b"\x01\x00\x00"
    parent = b"\0" * 64 if ENCODINGS[name].needs_parent else None
    with pytest.raises(ValueError, match="declares 1125899906842624 bytes"):
        ENCODINGS[name].decode(forged, 4, 64, parent)


def test_a_frame_that_declares_no_size_is_still_bounded():
    import zstandard

    from modelgit.store.encodings import zstd_decompress_bounded

    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 1000)
    assert zstd_decompress_bounded(unsized, 1000) == b"x" * 1000
    with pytest.raises(zstandard.ZstdError):
        zstd_decompress_bounded(unsized, 999)
    with pytest.raises(ValueError, match="malformed"):
        zstd_decompress_bounded(b"not a frame", 10)
