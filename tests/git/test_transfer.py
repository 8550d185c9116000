"""Object transfer between stores: delta chains arrive whole and are verified parents first."""

import os

import numpy as np
import pytest

from modelgit.errors import CorruptObjectError, ObjectMissingError
from modelgit.git import _mover
from modelgit.git.transfer import fetch_objects, push_objects
from modelgit.store import Store


def _chain(store, length=3, size=50_000):
    """Ids of ``length`` versions of one chunk, each a delta on the one before."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(size).astype(np.float32)
    ids, parent = [], None
    for _ in range(length):
        w = w * (1 + np.float32(1e-4) * rng.standard_normal(size).astype(np.float32))
        parent = store.put("F32", w.shape, w.tobytes(), parent=parent).oid
        ids.append(parent)
    return ids


def test_fetch_brings_the_delta_ancestors_and_decodes_each_once(tmp_path, monkeypatch):
    remote = Store.open(str(tmp_path / "remote"), create=True)
    ids = _chain(remote)
    assert remote.header(ids[-1]).parent == ids[-2]
    local = Store.open(str(tmp_path / "local"), create=True)
    decoded = []
    original = _mover.decode_object

    def counting(oid, *args, **kwargs):
        decoded.append(oid)
        return original(oid, *args, **kwargs)

    monkeypatch.setattr(_mover, "decode_object", counting)
    monkeypatch.setattr(Store, "_load", lambda *a, **k: pytest.fail("a chain decoded again"))
    result = fetch_objects(local, [("origin", remote)], {ids[-1]})
    assert result.objects == 3 and all(local.has(oid) for oid in ids)
    assert sorted(decoded) == sorted(ids)  # parents first: no chain decoded twice
    monkeypatch.undo()
    assert local.get(ids[-1]) == remote.get(ids[-1])


def test_a_corrupt_object_on_the_remote_is_named_and_not_kept(tmp_path):
    remote = Store.open(str(tmp_path / "remote"), create=True)
    ids = _chain(remote)
    path = os.path.join(remote.url, "objects", ids[1][:2], ids[1][2:])
    blob = bytearray(open(path, "rb").read())
    blob[-20] ^= 0xFF
    open(path, "wb").write(bytes(blob))
    local = Store.open(str(tmp_path / "local"), create=True)
    with pytest.raises(CorruptObjectError, match=ids[1]):
        fetch_objects(local, [("origin", remote)], {ids[-1]}, context="model.safetensors")
    assert not local.has(ids[1])


def test_push_sends_only_what_the_remote_lacks(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    ids = _chain(local)
    remote = Store.open(str(tmp_path / "remote"), create=True)
    first = push_objects(local, remote, {ids[0]})
    second = push_objects(local, remote, set(ids))
    assert (first.objects, second.objects, second.skipped) == (1, 2, 1)
    assert all(remote.get(oid) == local.get(oid) for oid in ids)


# ---------------------------------------------------------------------------- verification
def _damage(store, oid, at=-20, new=None):
    """Flip a byte of ``oid``'s stored bytes (or replace them by ``new``); returns the bytes."""
    key = Store._key(oid)
    blob = bytearray(store.backend.read(key))
    good = bytes(blob)
    if new is None:
        blob[at] ^= 0xFF
        new = bytes(blob)
    store.backend.delete(key)
    store.backend.write_atomic(key, new)
    return good


def _standalone(store, seeds=(1, 2, 3), size=20_000):
    return [store.put("F32", (size,), np.random.default_rng(s).standard_normal(size)
                      .astype(np.float32).tobytes()).oid for s in seeds]


def test_fetch_keeps_no_damaged_object_names_each_and_fetches_the_rest(tmp_path):
    remote = Store.open(str(tmp_path / "remote"), create=True)
    good, bad1, bad2 = _standalone(remote)
    _damage(remote, bad1)
    _damage(remote, bad2)
    local = Store.open(str(tmp_path / "local"), create=True)
    with pytest.raises(CorruptObjectError) as info:
        fetch_objects(local, [("origin", remote)], {good, bad1, bad2}, context="model.safetensors")
    assert local.has(good) and not local.has(bad1) and not local.has(bad2)  # 7b73911 kept one
    message = str(info.value)
    assert "2 of 3 objects of model.safetensors could not be fetched (1 were fetched)" in message
    assert bad1 in message and bad2 in message and "remote origin" in message
    assert "--verify-remote" in message  # how to repair the remote
    assert local.has(good) and not local.has(bad1) and not local.has(bad2)
    assert info.value.result.objects == 1 and info.value.result.failed == 2


def test_a_fetch_after_the_remote_is_repaired_gets_the_object(tmp_path):
    remote = Store.open(str(tmp_path / "remote"), create=True)
    ids = _chain(remote)
    saved = _damage(remote, ids[0])  # the root of the chain: every descendant fails with it
    local = Store.open(str(tmp_path / "local"), create=True)
    with pytest.raises(CorruptObjectError) as info:
        fetch_objects(local, [("origin", remote)], {ids[-1]})
    assert not any(local.has(oid) for oid in ids)  # 7b73911 kept the descendants
    assert "3 of 3 objects" in str(info.value) and f"delta parent {ids[0]} failed" in str(info.value)
    _damage(remote, ids[0], new=saved)
    assert fetch_objects(local, [("origin", remote)], {ids[-1]}).objects == 3
    assert local.get(ids[-1]) == remote.get(ids[-1])


def test_a_delta_whose_parent_no_remote_has_is_not_kept(tmp_path):
    remote = Store.open(str(tmp_path / "remote"), create=True)
    ids = _chain(remote)
    remote.backend.delete(Store._key(ids[0]))
    local = Store.open(str(tmp_path / "local"), create=True)
    with pytest.raises(ObjectMissingError) as info:
        fetch_objects(local, [("origin", remote)], {ids[-1]}, context="model.safetensors")
    assert not any(local.has(oid) for oid in ids)
    message = str(info.value)
    assert "3 of 3 objects of model.safetensors" in message and "remote origin" in message
    assert f"its delta parent {ids[0]} could not be fetched" in message


def test_a_damaged_parent_id_is_caught_before_the_object_is_kept(tmp_path):
    remote = Store.open(str(tmp_path / "remote"), create=True)
    ids = _chain(remote)
    head = remote.header(ids[-1])
    _damage(remote, ids[-1], at=head.payload_offset - 1)  # inside the parent id
    local = Store.open(str(tmp_path / "local"), create=True)
    with pytest.raises((CorruptObjectError, ObjectMissingError)):
        fetch_objects(local, [("origin", remote)], {ids[-1]})
    assert not local.has(ids[-1])


def test_a_damaged_local_delta_parent_is_quarantined_and_fetched_again(tmp_path):
    remote = Store.open(str(tmp_path / "remote"), create=True)
    ids = _chain(remote)
    local = Store.open(str(tmp_path / "local"), create=True)
    fetch_objects(local, [("origin", remote)], {ids[1]})
    _damage(local, ids[1])
    result = fetch_objects(local, [("origin", remote)], {ids[2]})
    assert result.objects == 2  # ids[2], and ids[1] again
    assert os.path.exists(os.path.join(local.url, "quarantine", ids[1]))
    assert local.get(ids[2]) == remote.get(ids[2]) and local.verify() == []


def test_fetch_completes_a_present_object_whose_delta_parent_is_missing(tmp_path):
    remote = Store.open(str(tmp_path / "remote"), create=True)
    ids = _chain(remote)
    local = Store.open(str(tmp_path / "local"), create=True)
    fetch_objects(local, [("origin", remote)], {ids[-1]})
    local.backend.delete(Store._key(ids[0]))
    result = fetch_objects(local, [("origin", remote)], {ids[-1]})
    assert (result.objects, result.skipped) == (1, 1)
    assert local.verify() == []


def test_push_never_uploads_a_damaged_local_object(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    good, bad = _standalone(local, (1, 2))
    _damage(local, bad)
    remote = Store.open(str(tmp_path / "remote"), create=True)
    with pytest.raises(CorruptObjectError) as info:
        push_objects(local, remote, {good, bad})
    message = str(info.value)
    assert bad in message and f"the local store at {local.url}" in message
    assert "not uploaded" in message and "modelgit fetch --remote" in message
    assert remote.has(good) and not remote.has(bad)
    assert not local.has(bad) and os.path.exists(os.path.join(local.url, "quarantine", bad))


def test_push_does_not_upload_descendants_of_a_damaged_delta_parent(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    ids = _chain(local)
    _damage(local, ids[1])
    remote = Store.open(str(tmp_path / "remote"), create=True)
    with pytest.raises(CorruptObjectError, match="2 of 3"):
        push_objects(local, remote, set(ids))
    assert [remote.has(oid) for oid in ids] == [True, False, False]
    # it was to be a delta on ids[1]: whole instead
    assert remote.header(ids[0]).parent is None and remote.verify() == []


def test_a_later_push_replaces_a_damaged_remote_copy(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    ids = _chain(local)
    remote = Store.open(str(tmp_path / "remote"), create=True)
    push_objects(local, remote, set(ids))
    good = remote.backend.read(Store._key(ids[1]))
    assert remote.header(ids[1]).hint("plen")  # re-encoded: its size is in its header
    _damage(remote, ids[1], new=good[:-100])  # truncated: the size shows it
    result = push_objects(local, remote, set(ids))
    assert remote.verify() == [] and remote.get(ids[1]) == local.get(ids[1])
    assert (result.objects, result.replaced, result.skipped) == (1, 1, 2)
    # whole, with "an unknown number of deltas under it": never re-encoded on a newer one
    assert remote.header(ids[1]).parent is None and remote.header(ids[1]).hint("below") == "8"


def test_damage_that_keeps_the_size_is_found_by_verify_remote(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    ids = _chain(local)
    remote = Store.open(str(tmp_path / "remote"), create=True)
    push_objects(local, remote, set(ids))
    _damage(remote, ids[0])
    assert push_objects(local, remote, set(ids)).objects == 0  # ordinary: sizes are trusted
    result = push_objects(local, remote, set(ids), verify_remote=True)
    assert (result.objects, result.replaced) == (1, 1)
    assert remote.verify() == []


def test_push_verifies_a_delta_against_a_parent_only_the_remote_has_whole(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    ids = _chain(local)
    remote = Store.open(str(tmp_path / "remote"), create=True)
    push_objects(local, remote, {ids[1]})
    expected = local.get(ids[2])
    _damage(local, ids[1])  # the parent of ids[2], already on the remote
    result = push_objects(local, remote, {ids[2]})
    assert result.objects == 1 and remote.get(ids[2]) == expected


@pytest.mark.parametrize("url", ["memory://", "file://"])
def test_fsspec_remotes_verify_both_ways(tmp_path, url):
    import uuid

    location = f"memory://mg-{uuid.uuid4().hex}" if url == "memory://" else f"file://{tmp_path}/fs"
    remote = Store.open(location, create=True)
    local = Store.open(str(tmp_path / "local"), create=True)
    ids = _chain(local)
    good, bad = _standalone(local, (4, 5))
    _damage(local, bad)
    with pytest.raises(CorruptObjectError, match=bad):
        push_objects(local, remote, {*ids, good, bad})
    assert all(remote.has(oid) for oid in [*ids, good]) and not remote.has(bad)
    _damage(remote, ids[-1])  # the newest, whole: every older version decodes through it
    _damage(remote, good, new=remote.backend.read(Store._key(good))[:-1])
    other = Store.open(str(tmp_path / "other"), create=True)
    with pytest.raises(CorruptObjectError) as info:
        fetch_objects(other, [("hub", remote)], {ids[0], good})
    assert not any(other.has(o) for o in [*ids, good]) and "4 of 4" in str(info.value)
    assert push_objects(local, remote, {*ids, good}, verify_remote=True).replaced == 2
    assert fetch_objects(other, [("hub", remote)], {ids[0], good}).objects == 4
    assert other.verify() == []
