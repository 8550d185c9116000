"""delta16's decoder against the one first written (tests/half_codec_reference.py).

Payloads stored by earlier modelgit must decode to the same bytes, and a payload one decoder
refuses the other must refuse: the store's decoder was rewritten for speed, not for format."""

import struct

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings, strategies as st

from half_codec_reference import decode as reference_decode
from modelgit.store import half_codec


def _pair(n, seed, density, spread):
    """(parent, child) uint16: any parent, a sparse or dense update of any size; a few
    parents are real-looking weights (ordinary exponents), the others any bit pattern."""
    rng = np.random.default_rng(seed)
    if seed % 2:
        w = rng.standard_normal(n).astype(np.float32) * np.float32(0.02)
        parent = (w.view(np.uint32) >> 16).astype(np.uint16)
    else:
        parent = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    step = rng.integers(-spread, spread + 1, n) * (rng.random(n) < density)
    child = ((parent.astype(np.int64) + step) % (1 << 16)).astype(np.uint16)
    return parent, child


def _both(payload, parent):
    """(output or None, refused) of each decoder."""
    out = []
    for decode in (half_codec.decode, reference_decode):
        try:
            out.append((bytes(decode(payload, parent)), False))
        except ValueError:
            out.append((None, True))
    return out


@given(n=st.integers(0, 20_000), seed=st.integers(0, 2**32 - 1), density=st.floats(0, 1),
       spread=st.sampled_from([1, 2, 5, 100, 65535]), mbits=st.sampled_from([7, 10]))
@settings(max_examples=30, deadline=None)
def test_same_bytes_as_the_first_decoder(n, seed, density, spread, mbits):
    """Many lanes (up to ~50 at 20 000 dense elements), runs with raw pieces, wrap-around."""
    parent, child = _pair(n, seed, density, spread)
    payload = half_codec.encode(child.tobytes(), parent.tobytes(), mbits)
    new, old = _both(payload, parent.tobytes())
    assert new == old == (child.tobytes(), False)


@given(seed=st.integers(0, 2**32 - 1), flips=st.lists(
    st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=3),
    density=st.sampled_from([0.01, 0.3, 0.9]))
@settings(max_examples=60, deadline=None)
def test_a_damaged_payload_is_refused_or_decoded_alike(seed, flips, density):
    """Flipped bytes anywhere (prefix, header, words): both refuse, or both give the same bytes
    (which the store's id check then rejects)."""
    parent, child = _pair(4000, seed, density, 3)
    payload = bytearray(half_codec.encode(child.tobytes(), parent.tobytes(), 7))
    for where, flip in flips:
        payload[where % len(payload)] ^= flip
    new, old = _both(bytes(payload), parent.tobytes())
    assert new == old


def _forge_header(payload, edit):
    version, shift, hlen = struct.unpack_from("<BBI", payload)
    header = zstandard.ZstdDecompressor().decompress(payload[6:6 + hlen])
    zheader = zstandard.ZstdCompressor().compress(edit(header))
    return struct.pack("<BBI", version, shift, len(zheader)) + zheader + payload[6 + hlen:]


def test_a_header_with_more_classes_than_a_byte_names_is_refused():
    """The decoder's symbol table grows with the classes: a payload may not choose 65 535."""
    parent, child = _pair(20_000, 1, 0.5, 3)
    payload = half_codec.encode(child.tobytes(), parent.tobytes(), 7)
    nctx = (0x7FFF >> 5) + 1

    def more_classes(header):
        nclass, lanes, steps = struct.unpack_from("<HII", header)
        codes_at = 10 + nctx
        extra = (half_codec.MAX_CLASSES + 1 - nclass) * 2 * half_codec.NTOK
        return (struct.pack("<HII", half_codec.MAX_CLASSES + 1, lanes, steps)
                + header[10:codes_at + nclass * 2 * half_codec.NTOK] + bytes(extra)
                + header[codes_at + nclass * 2 * half_codec.NTOK:])

    with pytest.raises(ValueError, match="more than 256"):
        half_codec.decode(_forge_header(payload, more_classes), parent.tobytes())


def test_lanes_that_end_early_or_hold_nothing_decode():
    """A lane without events (all zero runs) beside dense ones, and an unchanged chunk."""
    parent, child = _pair(30_000, 3, 0.8, 2)
    child[10_000:20_000] = parent[10_000:20_000]
    for c in (child, parent):
        payload = half_codec.encode(c.tobytes(), parent.tobytes(), 7)
        new, old = _both(payload, parent.tobytes())
        assert new == old == (c.tobytes(), False)
