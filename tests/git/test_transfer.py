"""Object transfer between stores: delta chains arrive whole and are verified parents first."""

import os

import numpy as np
import pytest

from modelgit.errors import CorruptObjectError
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
    original = Store._load

    def counting(self, oid, *args, **kwargs):
        if self is local:
            decoded.append(oid)
        return original(self, oid, *args, **kwargs)

    monkeypatch.setattr(Store, "_load", counting)
    result = fetch_objects(local, [("origin", remote)], {ids[-1]})
    assert result.objects == 3 and all(local.has(oid) for oid in ids)
    assert sorted(decoded) == sorted(ids)  # parents first: no chain decoded twice
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
    second = push_objects(local, remote, {ids[-1]})
    assert (first.objects, second.objects, second.skipped) == (1, 2, 1)
    assert remote.get(ids[-1]) == local.get(ids[-1])
