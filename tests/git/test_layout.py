"""A remote's store kept newest whole: a clone fetches the newest version's bytes only, a pull
gets the next version from small deltas, chains stay short, and nothing is ever visible or left
half-done (a delta without its parent, a chain that loops)."""

import json
import os

import numpy as np
import pytest

from modelgit.git import _fetch, _layout
from modelgit.git.transfer import fetch_objects, push_objects
from modelgit.store import MAX_DELTA_DEPTH, Store
from modelgit.store.encodings import DELTA, PLANES
from modelgit.store.objectfile import pack_header, unpack_header

SIZE = 50_000  # float32 elements: 200 KB a version


def _versions(store, count, seed=0, size=SIZE, noise=1e-3):
    """Ids of ``count`` versions of one chunk, each stored here as a delta on the one before
    (what `git add` of successive fine-tunes does)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(size).astype(np.float32)
    ids, parent = [], None
    for _ in range(count):
        w = w * (1 + np.float32(noise) * rng.standard_normal(size).astype(np.float32))
        parent = store.put("F32", w.shape, w.tobytes(), parent=parent).oid
        ids.append(parent)
    return ids


def _stores(tmp_path, *names):
    return [Store.open(str(tmp_path / name), create=True) for name in names]


def _real_depth(store, oid):
    depth = 0
    while (parent := store.header(oid).parent) is not None:
        oid, depth = parent, depth + 1
    return depth


def _stored(store, oids):
    return sum(store.stored_size(oid) for oid in oids)


def test_a_clone_fetches_the_newest_version_alone(tmp_path):
    local, remote, clone = _stores(tmp_path, "local", "remote", "clone")
    ids = _versions(local, 4)
    push_objects(local, remote, set(ids))
    head = remote.header(ids[-1])
    assert head.parent is None and head.hint("below") == "3"
    assert head.hint("older") == ".".join(reversed(ids[:-1]))  # nearest first
    assert [remote.header(o).parent for o in ids[:-1]] == ids[1:]  # each on its successor
    result = fetch_objects(clone, [("origin", remote)], {ids[-1]})
    assert (result.objects, result.bytes) == (1, remote.stored_size(ids[-1]))
    assert clone.get(ids[-1]) == local.get(ids[-1])
    # the history takes what the pusher's takes (deltas either way), not a copy per version
    assert _stored(remote, ids) < 1.1 * _stored(local, ids)


def test_copies_re_encoded_on_the_remote_cost_a_header_read_not_a_download(tmp_path, monkeypatch):
    from modelgit.git import transfer

    local, remote = _stores(tmp_path, "local", "remote")
    ids = _versions(local, 3)
    push_objects(local, remote, set(ids))
    assert all(remote.stored_size(o) != local.stored_size(o) for o in ids[1:])  # re-encoded
    monkeypatch.setattr(transfer, "_remote_copy_damaged",
                        lambda *a: pytest.fail("a copy of the expected size was downloaded"))
    again = push_objects(local, remote, set(ids))
    assert (again.objects, again.skipped) == (0, 3)


def test_a_lineage_pushed_version_by_version_is_as_compact_as_pushed_at_once(tmp_path):
    local, one_by_one, at_once = _stores(tmp_path, "local", "a", "b")
    ids = _versions(local, 5)
    regrafted = [push_objects(local, one_by_one, {oid}).reencoded for oid in ids]
    push_objects(local, at_once, set(ids))
    assert regrafted == [0, 1, 1, 1, 1]
    assert [one_by_one.header(o).parent for o in ids] == ids[1:] + [None]
    assert _stored(one_by_one, ids) == pytest.approx(_stored(at_once, ids), rel=0.02)
    assert one_by_one.verify() == [] and at_once.verify() == []


@pytest.mark.parametrize("one_by_one", [True, False])
def test_chains_never_grow_past_the_limit(tmp_path, one_by_one):
    local, remote = _stores(tmp_path, "local", "remote")
    ids = _versions(local, 2 * MAX_DELTA_DEPTH + 3)
    for batch in ([{o} for o in ids] if one_by_one else [set(ids)]):
        push_objects(local, remote, batch)
    assert remote.verify() == []  # a read fails on any chain longer than the limit
    depths = [_real_depth(remote, oid) for oid in ids]
    assert max(depths) <= MAX_DELTA_DEPTH
    whole = sum(d == 0 for d in depths)
    assert whole <= -(-len(ids) // (MAX_DELTA_DEPTH + 1)) + 1  # one whole copy per 9 versions
    for oid in ids:  # every header's `below` is an upper bound of what hangs under it
        below = remote.header(oid).hint("below")
        assert below is None or int(below) <= MAX_DELTA_DEPTH


def test_a_pull_gets_the_next_version_from_the_small_delta(tmp_path):
    local, remote, clone = _stores(tmp_path, "local", "remote", "clone")
    ids = _versions(local, 2)
    push_objects(local, remote, {ids[0]})
    fetch_objects(clone, [("origin", remote)], {ids[0]})
    push_objects(local, remote, {ids[1]})  # ids[0] becomes a delta on ids[1]
    result = fetch_objects(clone, [("origin", remote)], {ids[1]})
    assert result.objects == 1 and result.bytes == remote.stored_size(ids[0])
    assert result.bytes < 0.7 * remote.stored_size(ids[1])  # the delta, not the whole
    assert clone.get(ids[1]) == local.get(ids[1])
    assert clone.header(ids[1]).parent == ids[0]  # kept here as a delta on what it came from
    assert clone.verify() == []


def test_a_pull_several_versions_behind_goes_through_each_delta_when_that_is_cheaper(tmp_path):
    local, remote, clone = _stores(tmp_path, "local", "remote", "clone")
    ids = _versions(local, 4, noise=1e-6)  # tiny changes: three deltas weigh less than one whole
    push_objects(local, remote, {ids[0]})
    fetch_objects(clone, [("origin", remote)], {ids[0]})
    push_objects(local, remote, set(ids[1:]))
    result = fetch_objects(clone, [("origin", remote)], {ids[3]})
    deltas = sum(remote.stored_size(oid) for oid in ids[:3])
    assert result.bytes == deltas < remote.stored_size(ids[3])
    assert clone.get(ids[3]) == local.get(ids[3]) and not clone.has(ids[1])
    ids = _versions(local, 4, seed=1)  # larger changes: three deltas weigh more than the whole
    push_objects(local, remote, {ids[0]})
    fetch_objects(clone, [("origin", remote)], {ids[0]})
    push_objects(local, remote, set(ids[1:]))
    result = fetch_objects(clone, [("origin", remote)], {ids[3]})
    assert result.bytes == remote.stored_size(ids[3]) and clone.verify() == []


def test_a_pull_whose_delta_is_damaged_fetches_the_object_whole(tmp_path):
    local, remote, clone = _stores(tmp_path, "local", "remote", "clone")
    ids = _versions(local, 2)
    push_objects(local, remote, {ids[0]})
    fetch_objects(clone, [("origin", remote)], {ids[0]})
    push_objects(local, remote, {ids[1]})
    key = Store._key(ids[0])
    blob = bytearray(remote.backend.read(key))
    blob[-5] ^= 0xFF
    remote.backend.delete(key)
    remote.backend.write_atomic(key, bytes(blob))
    result = fetch_objects(clone, [("origin", remote)], {ids[1]})
    assert result.bytes == remote.stored_size(ids[1]) and clone.get(ids[1]) == local.get(ids[1])


def test_a_lost_object_whose_successor_here_is_a_delta_on_it_is_fetched_without_a_loop(tmp_path):
    """Here v2 is a delta on v1; the remote has v1 as a delta on v2. With v1 lost here (moved
    to quarantine), v1 can only be had through v2's remote copy: v2 is fetched again too."""
    local, remote = _stores(tmp_path, "local", "remote")
    ids = _versions(local, 2)
    push_objects(local, remote, set(ids))
    assert local.header(ids[1]).parent == ids[0] and remote.header(ids[0]).parent == ids[1]
    local.backend.move(Store._key(ids[0]), f"quarantine/{ids[0]}")
    result = fetch_objects(local, [("origin", remote)], {ids[0]})
    assert result.objects == 2 and local.verify(ids) == []
    assert local.get(ids[1]) == remote.get(ids[1])


def test_a_delta_on_an_object_at_the_end_of_a_long_chain_here_is_stored_whole(tmp_path):
    local, remote = _stores(tmp_path, "local", "remote")
    ids = _versions(local, MAX_DELTA_DEPTH + 1)  # the newest is as deep as allowed here
    assert _real_depth(local, ids[-1]) == MAX_DELTA_DEPTH
    data = local.get(ids[-1])
    remote.put("F32", (SIZE,), data)
    other = np.frombuffer(data, np.float32) * np.float32(1.0001)
    oid = remote.put("F32", (SIZE,), other.tobytes(), parent=ids[-1]).oid  # a delta on it there
    assert remote.header(oid).parent == ids[-1]
    fetch_objects(local, [("origin", remote)], {oid})
    assert local.header(oid).parent is None and local.get(oid) == other.tobytes()
    assert local.verify() == []


def test_a_fetch_planned_before_a_push_re_encodes_its_object_plans_it_again(tmp_path, monkeypatch):
    local, remote, clone = _stores(tmp_path, "local", "remote", "clone")
    ids = _versions(local, 2)
    push_objects(local, remote, {ids[0]})
    planned = _fetch._plan_fetch

    def then_push(*args, **kwargs):
        items = planned(*args, **kwargs)
        if ids[0] in items and items[ids[0]].header.parent is None:
            push_objects(local, remote, {ids[1]})  # ids[0] becomes a delta on ids[1]
        return items

    monkeypatch.setattr(_fetch, "_plan_fetch", then_push)
    result = fetch_objects(clone, [("origin", remote)], {ids[0]})
    assert remote.header(ids[0]).parent == ids[1]
    assert result.objects >= 1 and clone.get(ids[0]) == local.get(ids[0])
    assert clone.verify() == []


def test_a_push_cut_short_never_shows_a_delta_without_its_parent(tmp_path, monkeypatch):
    from modelgit.store import backends

    for cut in range(5):
        base = tmp_path / f"cut{cut}"
        local, remote = _stores(base, "local", "remote")
        ids = _versions(local, 5)
        push_objects(local, remote, {ids[0]})
        renames = {"n": 0}
        real = os.replace

        def failing(src, dst, cut=cut):
            if "objects" in str(dst):
                renames["n"] += 1
                if renames["n"] > cut:
                    raise OSError(5, "simulated crash")
            return real(src, dst)

        monkeypatch.setattr(backends.os, "replace", failing)
        with pytest.raises(Exception):
            push_objects(local, remote, set(ids[1:]))
        monkeypatch.setattr(backends.os, "replace", real)
        assert remote.verify() == [], f"after {cut} renames"
        assert push_objects(local, remote, set(ids)).failed == 0 and remote.verify() == []


def test_hard_links_to_a_local_remote_and_back(tmp_path, monkeypatch):
    local, remote, clone, copied = _stores(tmp_path, "local", "remote", "clone", "copied")
    data = np.random.default_rng(0).standard_normal(SIZE).astype(np.float32).tobytes()
    oid = local.put("F32", (SIZE,), data).oid
    mine = os.path.join(local.url, "objects", oid[:2], oid[2:])
    os.utime(mine, (1, 1))  # an old object here: new on the remote
    result = push_objects(local, remote, {oid})
    theirs = os.path.join(remote.url, "objects", oid[:2], oid[2:])
    assert result.linked == 1 and os.stat(mine).st_ino == os.stat(theirs).st_ino
    assert os.stat(theirs).st_mtime > 1e9  # gc's grace period counts from the link
    assert remote.gc(set(), dry_run=True, grace_seconds=3600).removed == 0
    assert fetch_objects(clone, [("origin", remote)], {oid}).linked == 1
    monkeypatch.setenv("MODELGIT_LINKS", "0")
    assert fetch_objects(copied, [("origin", remote)], {oid}).linked == 0
    assert os.stat(os.path.join(copied.url, "objects", oid[:2], oid[2:])).st_ino != os.stat(theirs).st_ino
    # moving one store's copy to quarantine (a rename) leaves the other's name in place
    local.backend.move(Store._key(oid), f"quarantine/{oid}")
    assert remote.get(oid) == clone.get(oid) == data


def test_a_hard_linked_object_damaged_in_place_is_damaged_on_both_sides(tmp_path):
    """The price of sharing a file (git-lfs pays it too): damage written into the file shows in
    both stores. Each finds it when it reads it, moves its own name aside, and is repaired
    independently: a new copy is a new file."""
    local, remote = _stores(tmp_path, "local", "remote")
    oid = local.put("F32", (SIZE,), np.ones(SIZE, np.float32).tobytes()).oid
    push_objects(local, remote, {oid})
    path = os.path.join(local.url, "objects", oid[:2], oid[2:])
    with open(path, "r+b") as handle:
        handle.seek(-5, os.SEEK_END)
        handle.write(b"\xff")
    assert local.verify() and os.path.exists(os.path.join(local.url, "quarantine", oid))
    assert Store(remote.backend, quarantine=False).verify()  # the remote's name, same file
    local.put("F32", (SIZE,), np.ones(SIZE, np.float32).tobytes())  # added again: a new file
    assert push_objects(local, remote, {oid}, verify_remote=True).replaced == 1
    assert remote.verify() == [] and local.verify() == []


def test_an_fsspec_remote_is_kept_newest_whole_too(tmp_path):
    import uuid

    local, clone = _stores(tmp_path, "local", "clone")
    remote = Store.open(f"memory://mg-{uuid.uuid4().hex}", create=True)
    ids = _versions(local, 3)
    for oid in ids:
        push_objects(local, remote, {oid})
    assert remote.header(ids[-1]).parent is None and remote.header(ids[0]).parent == ids[1]
    result = fetch_objects(clone, [("origin", remote)], {ids[-1]})
    assert result.objects == 1 and clone.get(ids[-1]) == local.get(ids[-1])
    assert remote.verify() == []


def test_the_store_is_marked_so_that_an_older_modelgit_refuses_it(tmp_path):
    local, remote = _stores(tmp_path, "local", "remote")
    ids = _versions(local, 2)
    push_objects(local, remote, set(ids))
    config = json.loads((tmp_path / "remote" / "modelgit-store.json").read_text())
    assert config == {"format": 2, "layout": "newest-whole"}
    (tmp_path / "remote" / "modelgit-store.json").write_text(json.dumps({"format": 4}))  # 3 is a store with derived objects
    with pytest.raises(Exception, match="upgrade modelgit"):
        Store.open(str(tmp_path / "remote"))


def test_a_store_that_held_objects_before_never_grafts_what_it_cannot_count(tmp_path):
    """Objects pushed before the store was kept newest whole may have forward deltas on them
    that no hint counts: they are never re-encoded; new standalone objects say `below=0`."""
    local, remote = _stores(tmp_path, "local", "remote")
    ids = _versions(local, 3)
    legacy_blob = local.backend.read(Store._key(ids[0]))
    remote.backend.write_atomic(Store._key(ids[0]), legacy_blob)  # an old push: as it was
    push_objects(local, remote, {ids[1]})
    assert remote.legacy_heads or Store.open(remote.url).legacy_heads
    assert remote.header(ids[0]).parent is None  # not grafted
    assert remote.header(ids[1]).hint("below") == "0"
    push_objects(local, remote, {ids[2]})  # ids[1] has a hint: it is grafted
    assert remote.header(ids[1]).parent == ids[2] and remote.verify() == []


def test_plan_prefers_the_longest_line_and_cuts_long_chains():
    def header(parent):
        return unpack_header(pack_header(DELTA if parent else PLANES, 0, "F32", (4,), 16, parent))

    ids = [f"{i:064x}" for i in range(1, 14)]
    headers = {ids[0]: header(None)}
    for prev, oid in zip(ids, ids[1:12]):  # a line of 12 versions
        headers[oid] = header(prev)
    headers[ids[12]] = header(ids[0])  # a side branch off the first
    plan = _layout.plan_layout(headers, {}, legacy=False)
    assert plan.newer[ids[0]] == ids[1]  # the main line, not the branch
    assert ids[12] not in plan.newer and plan.below[ids[12]] == 0
    assert max(plan.depth.values()) <= MAX_DELTA_DEPTH
    assert sum(oid not in plan.newer for oid in ids[:12]) == 2  # the newest, and one cut


# ---------------------------------------------------------------------------- through git
def _store_bytes(store_dir):
    return sum(f.stat().st_size for f in (store_dir / "objects").rglob("*") if f.is_file())


def test_through_git_a_clone_receives_what_it_checks_out_and_a_pull_the_change(repo, tmp_path):
    from safetensors.numpy import save_file

    from gitutil import git, modelgit

    rng = np.random.default_rng(0)
    tensors = {f"layers.{i}.w": (rng.standard_normal((512, 256)) * 0.02).astype(np.float32)
               for i in range(4)}
    path = repo / "model.safetensors"
    bare = tmp_path / "hub.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    for version in range(4):  # fine-tunes: every tensor moves a little
        tensors = {k: v * (1 + np.float32(1e-3) * rng.standard_normal(v.shape).astype(np.float32))
                   for k, v in tensors.items()}
        save_file(tensors, str(path))
        git(repo, "add", "model.safetensors")
        git(repo, "commit", "-qm", f"v{version}")
    git(repo, "push", "-q", "origin", "main")
    clone = tmp_path / "clone"
    modelgit(tmp_path, "clone", str(bare), str(clone))
    size = path.stat().st_size
    assert (clone / "model.safetensors").read_bytes() == path.read_bytes()
    received = _store_bytes(clone / ".git" / "modelgit" / "store")
    assert received <= 1.1 * size  # before issue 12: every ancestor of every delta too (2.3x)
    local_bytes = _store_bytes(repo / ".git" / "modelgit" / "store")
    assert _store_bytes(bare / "modelgit" / "store") <= 1.05 * local_bytes  # history as compact

    tensors = {k: v * (1 + np.float32(1e-3) * rng.standard_normal(v.shape).astype(np.float32))
               for k, v in tensors.items()}
    save_file(tensors, str(path))
    git(repo, "commit", "-qam", "v4")
    git(repo, "push", "-q", "origin", "main")
    before = _store_bytes(clone / ".git" / "modelgit" / "store")
    git(clone, "pull", "-q", "origin", "main")
    assert (clone / "model.safetensors").read_bytes() == path.read_bytes()
    pulled = _store_bytes(clone / ".git" / "modelgit" / "store") - before
    assert pulled < 0.8 * size  # deltas of what changed, not the new version whole
