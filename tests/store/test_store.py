import os

import numpy as np
import pytest

from modelgit.errors import CorruptObjectError, ObjectMissingError, StoreError, UsageError
from modelgit.store import MAX_DELTA_DEPTH, Store, object_id


def test_put_get_round_trip_and_dedup(store):
    data = np.arange(1000, dtype=np.float32).tobytes()
    first = store.put("F32", (1000,), data)
    again = store.put("F32", (1000,), data)
    assert first.written and not again.written and first.oid == again.oid
    assert store.get(first.oid) == data


def test_id_depends_on_dtype_and_shape(store):
    data = bytes(16)
    ids = {object_id("F32", (4,), data), object_id("I32", (4,), data), object_id("F32", (2, 2), data)}
    assert len(ids) == 3


def test_missing_object_error_names_object_and_store(store):
    oid = "ab" * 32
    with pytest.raises(ObjectMissingError, match=oid) as info:
        store.get(oid)
    assert store.url in str(info.value)


def test_flipped_byte_is_detected(store):
    data = np.random.default_rng(0).standard_normal(4096).astype(np.float32).tobytes()
    oid = store.put("F32", (4096,), data).oid
    path = os.path.join(store.url, "objects", oid[:2], oid[2:])
    blob = bytearray(open(path, "rb").read())
    blob[-10] ^= 0xFF
    open(path, "wb").write(bytes(blob))
    problems = store.verify()
    assert len(problems) == 1 and oid in problems[0]


def test_a_damaged_object_is_moved_to_quarantine_so_that_adding_it_again_repairs_it(store):
    data = np.random.default_rng(0).standard_normal(4096).astype(np.float32).tobytes()
    oid = store.put("F32", (4096,), data).oid
    path = os.path.join(store.url, "objects", oid[:2], oid[2:])
    blob = bytearray(open(path, "rb").read())
    blob[-10] ^= 0xFF
    open(path, "wb").write(bytes(blob))
    with pytest.raises(CorruptObjectError, match="moved to quarantine") as info:
        store.get(oid)
    assert info.value.oid == oid and info.value.quarantined
    assert not store.has(oid)
    assert open(os.path.join(store.url, "quarantine", oid), "rb").read() == bytes(blob)
    assert store.put("F32", (4096,), data).written  # a present damaged copy would be kept
    assert store.get(oid) == data and store.verify() == []
    assert store.gc(set()).removed_quarantined == 1


def test_a_damaged_object_replaced_meanwhile_is_not_quarantined(store):
    """A reader that found damage must not move aside the good copy a fetch renamed over it."""
    data = np.random.default_rng(0).standard_normal(4096).astype(np.float32).tobytes()
    oid = store.put("F32", (4096,), data).oid
    good = store.backend.read(store._key(oid))
    assert not store._quarantine(oid, good[:-1] + bytes([good[-1] ^ 1]))
    assert store.get(oid) == data


def test_stores_of_remotes_are_read_without_quarantine(tmp_path):
    store = Store.open(str(tmp_path / "s"), create=True, quarantine=False)
    oid = store.put("U8", (3,), b"abc").oid
    path = os.path.join(store.url, "objects", oid[:2], oid[2:])
    open(path, "ab").write(b"x")
    with pytest.raises(CorruptObjectError):
        store.get(oid)
    assert store.has(oid)


def test_a_damaged_delta_ancestor_is_named(store):
    rng = np.random.default_rng(2)
    w = rng.standard_normal(4096).astype(np.float32)
    base = store.put("F32", w.shape, w.tobytes()).oid
    w2 = w * (1 + np.float32(1e-4) * rng.standard_normal(w.size).astype(np.float32))
    child = store.put("F32", w.shape, w2.tobytes(), parent=base).oid
    assert store.header(child).parent == base
    path = os.path.join(store.url, "objects", base[:2], base[2:])
    blob = bytearray(open(path, "rb").read())
    blob[-10] ^= 0xFF
    open(path, "wb").write(bytes(blob))
    with pytest.raises(CorruptObjectError, match=base):  # the ancestor, not only the child
        store.get(child)


def test_truncated_object_is_detected(store):
    oid = store.put("U8", (100,), bytes(range(100))).oid
    path = os.path.join(store.url, "objects", oid[:2], oid[2:])
    open(path, "wb").write(open(path, "rb").read()[:20])
    with pytest.raises(CorruptObjectError):
        store.get(oid)


def test_delta_chain_is_bounded(store):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(1 << 16).astype(np.float32)
    parent, depths = None, []
    for _ in range(MAX_DELTA_DEPTH + 3):
        w = w * (1 + np.float32(1e-4) * rng.standard_normal(w.size).astype(np.float32))
        result = store.put("F32", w.shape, w.tobytes(), parent=parent)
        depths.append(store.header(result.oid).depth)
        assert store.get(result.oid) == w.tobytes()
        parent = result.oid
    assert max(depths) == MAX_DELTA_DEPTH
    assert depths[0] == 0 and depths[1] == 1


def test_gc_keeps_delta_parents_and_removes_the_rest(store):
    rng = np.random.default_rng(1)
    w = rng.standard_normal(1 << 14).astype(np.float32)
    base = store.put("F32", w.shape, w.tobytes()).oid
    w2 = w * (1 + np.float32(1e-4) * rng.standard_normal(w.size).astype(np.float32))
    child = store.put("F32", w.shape, w2.tobytes(), parent=base).oid
    junk = store.put("U8", (3,), b"abc").oid
    assert store.header(child).parent == base
    result = store.gc({child})
    assert result.removed == 1 and not store.has(junk)
    assert store.get(child) == w2.tobytes()


def test_refs(store):
    oid = store.put_blob(b"x")
    store.set_ref("models/a", oid)
    assert store.refs() == {"models/a": oid}
    with pytest.raises(UsageError):
        store.set_ref("../escape", oid)
    store.delete_ref("models/a")
    assert store.refs() == {}


def test_open_missing_store_says_how_to_create(tmp_path):
    with pytest.raises(StoreError, match="no modelgit store"):
        Store.open(str(tmp_path / "nothing"))


def test_newer_store_format_is_refused(tmp_path):
    Store.open(str(tmp_path / "s"), create=True)
    (tmp_path / "s" / "modelgit-store.json").write_text('{"format": 99}')
    with pytest.raises(StoreError, match="newer"):
        Store.open(str(tmp_path / "s"))


def test_memory_filesystem_backend():
    store = Store.open("memory://modelgit-test-store", create=True)
    data = np.arange(50000, dtype=np.float32).tobytes()
    oid = store.put("F32", (50000,), data).oid
    assert store.get(oid) == data
    assert list(store.iter_objects()) == [oid]
    store.set_ref("r", oid)
    assert store.refs() == {"r": oid}
    assert store.gc({oid}).removed == 0


def test_fsspec_backend_on_local_filesystem(tmp_path):
    from modelgit.store import FsspecBackend
    from modelgit.store.store import CONFIG_KEY

    backend = FsspecBackend(f"file://{tmp_path}/fs-store")
    backend.write_atomic(CONFIG_KEY, b'{"format": 1}')
    store = Store(backend)
    data = np.arange(3000, dtype=np.int32).tobytes()
    oid = store.put("I32", (3000,), data).oid
    assert store.get(oid) == data
    assert (tmp_path / "fs-store" / "objects" / oid[:2] / oid[2:]).is_file()
    assert list(store.iter_objects()) == [oid]
    assert not list(backend.list("tmp"))


def _forge(store, oid: str, dtype: str, shape: tuple, raw_len: int, payload: bytes) -> None:
    """Write an object file by hand, as someone with write access to a remote store can."""
    from modelgit.store.encodings import BY_CODE
    from modelgit.store.objectfile import pack_header

    zstd = [e for e in BY_CODE.values() if e.name == "zstd"][0]
    path = os.path.join(store.url, "objects", oid[:2], oid[2:])
    if os.path.exists(path):
        os.chmod(path, 0o644)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(pack_header(zstd, 0, dtype, shape, raw_len, None) + payload)


def test_a_header_promising_more_than_any_object_holds_is_refused_before_decoding(store):
    """A decompression bomb: 16 KiB of zstd whose header promises 512 MiB. Decoding it first
    and hashing afterwards would hold the 512 MiB (8 GiB for a 256 KiB object)."""
    import zstandard

    from modelgit.store.store import MAX_OBJECT_BYTES, decode_object

    raw_len = 2 * MAX_OBJECT_BYTES
    compressor = zstandard.ZstdCompressor(level=1).compressobj(size=raw_len)
    payload = b"".join(compressor.compress(bytes(1 << 24)) for _ in range(raw_len >> 24))
    payload += compressor.flush()
    assert len(payload) < 64 * 1024
    oid = "cd" * 32
    _forge(store, oid, "F32", (raw_len // 4,), raw_len, payload)
    with pytest.raises(CorruptObjectError, match="refused before decoding"):
        store.get(oid)
    blob = open(os.path.join(store.url, "quarantine", oid), "rb").read()
    with pytest.raises(ValueError, match="refused before decoding"):
        decode_object(oid, blob)  # what every transfer runs before it writes an object


def test_a_header_whose_size_contradicts_its_shape_is_refused(store):
    import zstandard

    oid = "ef" * 32
    _forge(store, oid, "F32", (4,), 1 << 20, zstandard.ZstdCompressor().compress(bytes(1 << 20)))
    with pytest.raises(CorruptObjectError, match=r"header says 1048576 bytes of content, but F32 \[4\] is 16"):
        store.get(oid)


def test_put_refuses_content_that_does_not_match_its_shape(store):
    with pytest.raises(StoreError, match="does not match"):
        store.put("F32", (5,), bytes(16))
