"""delta16: the bf16/fp16 delta encoding (store/half_codec.py) and its selection."""

import dataclasses
import json
import os

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from modelgit.errors import CorruptObjectError, StoreError
from modelgit.store import Store, half_codec
from modelgit.store import store as store_module
from modelgit.store.encodings import DELTA, DELTA16, encode_best_delta, encode_delta

MBITS = {"BF16": 7, "F16": 10}

# bit patterns every 16-bit float codec must carry exactly
BF16_SPECIAL = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x0001, 0x8001, 0x007F,
                0x0080, 0x7F7F, 0xFF7F, 0x3F80, 0xBF80, 0xFFFF]
F16_SPECIAL = [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x7C01, 0x0001, 0x8001, 0x03FF,
               0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0xBC00, 0xFFFF]


def bf16(values):
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def half(values, dtype):
    if dtype == "BF16":
        return bf16(values)
    return np.asarray(values, dtype=np.float32).astype(np.float16).view(np.uint16)


def fine_tune(n, dtype, seed=0, rel=1e-3, how="mult"):
    """(parent, child) uint16 arrays: gaussian weights and a multiplicative update, or an
    additive one of ``rel`` times their spread."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n).astype(np.float32) * np.float32(0.02)
    parent = half(w, dtype)
    back = (parent.astype(np.uint32) << 16).view(np.float32) if dtype == "BF16" \
        else parent.view(np.float16).astype(np.float32)
    noise = np.float32(rel) * rng.standard_normal(n).astype(np.float32)
    child = half(back * (1 + noise) if how == "mult" else back + np.float32(0.02) * noise, dtype)
    return parent, child


def round_trip(child, parent, mbits):
    payload = half_codec.encode(child.tobytes(), parent.tobytes(), mbits)
    out = half_codec.decode(payload, parent.tobytes())
    assert bytes(out) == child.tobytes()
    return payload


@pytest.mark.parametrize("dtype,special", [("BF16", BF16_SPECIAL), ("F16", F16_SPECIAL)])
def test_special_values_round_trip_both_ways(dtype, special):
    """NaN payloads, infinities, subnormals, -0 and +0, the largest finite values: as parent
    and as child, against each other and against ordinary weights."""
    special = np.array(special, dtype=np.uint16)
    pairs = np.array(np.meshgrid(special, special)).reshape(2, -1)
    round_trip(pairs[0], pairs[1], MBITS[dtype])
    parent, child = fine_tune(4096, dtype)
    child[: len(special)] = special
    round_trip(child, parent, MBITS[dtype])
    parent[-len(special):] = special
    round_trip(child, parent, MBITS[dtype])


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 383, 384, 385, 1001, 65537])
@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_odd_sizes_round_trip(n, dtype):
    parent, child = fine_tune(n, dtype, seed=n)
    round_trip(child, parent, MBITS[dtype])
    round_trip(parent, parent, MBITS[dtype])  # no change at all


def test_long_runs_use_raw_pieces_beyond_twelve_bits():
    """A few changes in a million elements: runs of ~2**18 take two raw pieces."""
    parent = fine_tune(1 << 20, "BF16")[0]
    child = parent.copy()
    child[[5, 300_000, (1 << 20) - 1]] += 1
    payload = round_trip(child, parent, 7)
    assert len(payload) < 200


@given(n=st.integers(0, 3000), seed=st.integers(0, 2**32 - 1), density=st.floats(0, 1),
       dtype=st.sampled_from(["BF16", "F16"]), spread=st.integers(1, 65535))
@settings(max_examples=60, deadline=None)
def test_round_trip_property(n, seed, density, dtype, spread):
    """Any parent, any child: sparse or dense changes of any size, with wrap-around."""
    rng = np.random.default_rng(seed)
    parent = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    step = rng.integers(-spread, spread + 1, n) * (rng.random(n) < density)
    child = ((parent.astype(np.int64) + step) % (1 << 16)).astype(np.uint16)
    round_trip(child, parent, MBITS[dtype])


@given(data=st.binary(min_size=2, max_size=2048), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_random_children_of_random_parents(data, seed):
    child = np.frombuffer(data[: len(data) // 2 * 2], dtype=np.uint16)
    parent = np.random.default_rng(seed).integers(0, 1 << 16, len(child), dtype=np.uint16)
    round_trip(child, parent, 7)


def test_a_fine_tune_costs_half_of_what_delta_costs():
    parent, child = fine_tune(1 << 18, "BF16")
    new = half_codec.encode(child.tobytes(), parent.tobytes(), 7)
    old = encode_delta(child.tobytes(), 2, parent.tobytes())
    assert len(new) < 0.6 * len(old)


# ---------------------------------------------------------------- damaged payloads
@example(where=1280, flip=144, seed=0)  # the header's zstd frame then declares 7.6e17 bytes
@given(where=st.integers(0, 10**9), flip=st.integers(1, 255), seed=st.integers(0, 50))
@settings(max_examples=80, deadline=None)
def test_damaged_payload_fails_with_value_error_or_is_caught_by_the_size(where, flip, seed):
    """A flipped byte never crashes the decoder otherwise, nor makes it run away: it raises
    ValueError or yields content of the right size (that the store's id check then rejects)."""
    parent, child = fine_tune(5000, "BF16", seed=seed)
    payload = bytearray(half_codec.encode(child.tobytes(), parent.tobytes(), 7))
    payload[where % len(payload)] ^= flip
    try:
        out = half_codec.decode(bytes(payload), parent.tobytes())
    except ValueError:
        return
    assert len(out) == child.nbytes


@pytest.mark.parametrize("cut", [0, 1, 5, 6, 20, -1, -2, -3])
def test_truncated_payload_is_refused(cut):
    parent, child = fine_tune(5000, "BF16")
    payload = half_codec.encode(child.tobytes(), parent.tobytes(), 7)
    with pytest.raises(ValueError):
        half_codec.decode(payload[:cut], parent.tobytes())


def test_a_newer_format_version_asks_for_an_upgrade():
    parent, child = fine_tune(100, "BF16")
    payload = bytearray(half_codec.encode(child.tobytes(), parent.tobytes(), 7))
    payload[0] = 2
    with pytest.raises(ValueError, match="upgrade modelgit"):
        half_codec.decode(bytes(payload), parent.tobytes())


def test_wrong_parent_size_is_refused():
    parent, child = fine_tune(100, "BF16")
    payload = half_codec.encode(child.tobytes(), parent.tobytes(), 7)
    with pytest.raises(ValueError):
        half_codec.decode(payload, parent[:-1].tobytes())
    with pytest.raises(ValueError):
        half_codec.encode(child.tobytes(), parent[:-1].tobytes(), 7)


# ---------------------------------------------------------------- selection and the store
@pytest.mark.parametrize("dtype,how", [("BF16", "mult"), ("BF16", "add"), ("F16", "add")])
def test_selection_takes_delta16_for_a_fine_tune(dtype, how):
    parent, child = fine_tune(1 << 16, dtype, how=how)
    encoding, payload = encode_best_delta(child.tobytes(), dtype, 2, parent.tobytes())
    plain = encode_delta(child.tobytes(), 2, parent.tobytes())
    assert encoding is DELTA16 and len(payload) < len(plain)


def test_selection_keeps_delta_when_it_is_smaller_and_for_other_dtypes():
    rng = np.random.default_rng(0)
    parent = rng.integers(0, 1 << 16, 4096, dtype=np.uint16)
    child = parent + np.uint16(1)  # every element +1: delta's zstd codes that in a few bytes
    encoding, payload = encode_best_delta(child.tobytes(), "BF16", 2, parent.tobytes())
    assert encoding is DELTA and payload == encode_delta(child.tobytes(), 2, parent.tobytes())
    # int16 and fp32 data never try delta16; fp32 gets delta's very bytes
    assert encode_best_delta(child.tobytes(), "I16", 2, parent.tobytes())[0] is DELTA
    w = rng.standard_normal(4096).astype(np.float32)
    w2 = w * np.float32(1.001)
    assert encode_best_delta(w2.tobytes(), "F32", 4, w.tobytes()) == \
        (DELTA, encode_delta(w2.tobytes(), 4, w.tobytes()))
    assert encode_best_delta(child.tobytes(), "BF16", 2, parent[:-1].tobytes()) is None


def test_selection_keeps_delta_when_delta16_saves_less_than_five_percent(monkeypatch):
    """delta16 decodes far slower than delta: a smaller payload by a hair does not pay for it."""
    from modelgit.store import encodings

    parent, child = fine_tune(1 << 14, "BF16")
    plain = encode_delta(child.tobytes(), 2, parent.tobytes())
    for size, chosen in [(int(len(plain) * 0.96), DELTA), (int(len(plain) * 0.95), DELTA16)]:
        monkeypatch.setattr(encodings, "DELTA16", dataclasses.replace(
            encodings.DELTA16, encode=lambda *args, size=size: bytes(size)))
        assert encode_best_delta(child.tobytes(), "BF16", 2, parent.tobytes())[0].name == \
            chosen.name


def test_selection_does_not_try_delta16_on_unrelated_content(monkeypatch):
    """A tensor trained anew is no update of its parent: delta16 would cost time for nothing."""
    from modelgit.store import encodings

    def refuse(*args, **kwargs):
        raise AssertionError("delta16 was tried")

    monkeypatch.setattr(encodings, "DELTA16", dataclasses.replace(encodings.DELTA16, encode=refuse))
    rng = np.random.default_rng(1)
    parent = half(rng.standard_normal(1 << 14) * 0.02, "BF16")
    child = half(rng.standard_normal(1 << 14) * 0.02, "BF16")
    assert encode_best_delta(child.tobytes(), "BF16", 2, parent.tobytes())[0] is DELTA


def test_store_writes_delta16_marks_the_format_and_reads_back(store):
    parent, child = fine_tune(1 << 16, "BF16")
    first = store.put("BF16", (256, 256), parent.tobytes())
    assert json.loads(open(os.path.join(store.url, "modelgit-store.json")).read())["format"] == 1
    second = store.put("BF16", (256, 256), child.tobytes(), parent=first.oid)
    assert second.encoding == "delta16"
    config = json.loads(open(os.path.join(store.url, "modelgit-store.json")).read())
    assert config["format"] == 3 and config["delta16"]
    assert store.header(second.oid).parent == first.oid
    again = Store.open(store.url)
    assert again.get(second.oid) == child.tobytes()
    assert again.stats().by_encoding["delta16"]["objects"] == 1


def test_a_modelgit_without_delta16_refuses_the_store(store, monkeypatch):
    parent, child = fine_tune(1 << 16, "F16", how="add")
    first = store.put("F16", (1 << 16,), parent.tobytes())
    assert store.put("F16", (1 << 16,), child.tobytes(), parent=first.oid).encoding == "delta16"
    monkeypatch.setattr(store_module, "MAX_FORMAT", 2)  # what the previous release knows
    with pytest.raises(StoreError, match="upgrade modelgit"):
        Store.open(store.url)


def test_newest_whole_keeps_format_3(tmp_path):
    store = Store.open(str(tmp_path / "s"), create=True)
    store.use_delta16()
    store.use_newest_whole()
    assert Store.open(store.url).config["format"] == 3


def test_a_damaged_delta16_object_is_corrupt_never_wrong_bytes(store):
    parent, child = fine_tune(1 << 16, "BF16")
    first = store.put("BF16", (1 << 16,), parent.tobytes())
    oid = store.put("BF16", (1 << 16,), child.tobytes(), parent=first.oid).oid
    path = os.path.join(store.url, "objects", oid[:2], oid[2:])
    blob = bytearray(open(path, "rb").read())
    blob[-7] ^= 0x10
    open(path, "wb").write(bytes(blob))
    with pytest.raises(CorruptObjectError, match=oid):
        store.get(oid)


def test_a_payload_that_asks_for_too_many_steps_is_refused():
    """A hostile header may not buy a numpy pass per element: steps are capped by the spec."""
    import struct

    import zstandard

    parent, child = fine_tune(20_000, "BF16", how="add")
    payload = half_codec.encode(child.tobytes(), parent.tobytes(), 7)
    version, shift, hlen = struct.unpack_from("<BBI", payload)
    header = bytearray(zstandard.ZstdDecompressor().decompress(payload[6:6 + hlen]))
    assert struct.unpack_from("<HII", header)[2] <= half_codec.MAX_STEPS
    struct.pack_into("<I", header, 6, half_codec.MAX_STEPS + 1)
    zheader = zstandard.ZstdCompressor().compress(bytes(header))
    forged = struct.pack("<BBI", version, shift, len(zheader)) + zheader + payload[6 + hlen:]
    with pytest.raises(ValueError, match="counts"):
        half_codec.decode(forged, parent.tobytes())


def test_more_items_than_one_block_round_trip():
    """A dense update has more items than the encoder tokenises at a time (BLOCK)."""
    parent, child = fine_tune(half_codec.BLOCK * 2 + 12345, "F16", how="add")
    assert np.count_nonzero(parent != child) > half_codec.BLOCK
    round_trip(child, parent, 10)


def test_transfers_keep_delta16_readable_and_mark_the_stores_that_get_it(tmp_path):
    """A fetch that copies delta16 objects marks the destination format 3 before they land; a
    push stores older versions on the remote as delta (its layout re-encodes), so the remote
    stays readable by the previous release."""
    from modelgit.git.transfer import fetch_objects, push_objects

    local = Store.open(str(tmp_path / "local"), create=True)
    parent, child = fine_tune(1 << 16, "BF16")
    first = local.put("BF16", (1 << 16,), parent.tobytes()).oid
    second = local.put("BF16", (1 << 16,), child.tobytes(), parent=first).oid
    assert local.header(second).encoding is DELTA16
    copy = Store.open(str(tmp_path / "copy"), create=True)
    fetch_objects(copy, [("peer", local)], {second})
    assert copy.header(second).encoding is DELTA16 and copy.get(second) == child.tobytes()
    assert Store.open(copy.url).config["format"] == 3
    remote = Store.open(str(tmp_path / "remote"), create=True, newest_whole=True)
    push_objects(local, remote, {first, second})
    assert Store.open(remote.url).config["format"] == 2
    assert remote.header(first).encoding is DELTA and remote.get(first) == parent.tobytes()
    assert remote.get(second) == child.tobytes()
