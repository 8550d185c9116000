"""Damaged objects on either side of a push or fetch, through git and the CLI: nothing damaged is
kept or uploaded, every message names the object and the side, and each case recovers once its
cause is fixed."""

import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelgit.git.repo import find_repo
from modelgit.manifest import Manifest

from gitutil import git, modelgit
from helpers import float_weights


def _save(path, **tensors):
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path.read_bytes()


def _object(store_dir, oid):
    return store_dir / "objects" / oid[:2] / oid[2:]


def _rewrite(path, data):
    """Damage one store's copy only. Transfers between local stores hard-link object files, so
    writing into the file would damage the other store's copy as well (see
    test_a_hard_linked_object_damaged_in_place_is_damaged_on_both_sides): write a new file."""
    path.unlink()
    path.write_bytes(data)


def _flip(path, at=-10):
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0xFF
    _rewrite(path, bytes(blob))


def _chunk(repo, rev, tensor):
    manifest = Manifest.loads(git(repo, "show", f"{rev}:model.safetensors").stdout.encode())
    return manifest.files[0].tensor(tensor).chunks[0]


@pytest.fixture
def pushed(repo, tmp_path):
    """A repository with one commit pushed to a local bare remote: (repo, bare, file bytes)."""
    data = _save(repo / "model.safetensors", a=float_weights(1, (300, 200)), b=float_weights(2, (64,)))
    git(repo, "add", "model.safetensors")
    git(repo, "commit", "-qm", "base")
    bare = tmp_path / "hub.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "push", "-q", "origin", "main")
    return repo, bare, data


def test_a_clone_from_a_damaged_remote_keeps_nothing_damaged_and_recovers_after_repair(pushed, tmp_path):
    repo, bare, data = pushed
    oids = [_chunk(repo, "HEAD", "a"), _chunk(repo, "HEAD", "b")]
    remote_copies = [_object(bare / "modelgit" / "store", oid) for oid in oids]
    good = [path.read_bytes() for path in remote_copies]
    for path in remote_copies:
        _flip(path)
    clone = tmp_path / "clone"
    result = modelgit(tmp_path, "clone", str(bare), str(clone), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    # a failed clone leaves nothing (7b73911 kept a damaged object; later, a half clone)
    assert not clone.exists() and not any(".modelgit-tmp-" in p.name for p in tmp_path.iterdir())
    assert all(oid in result.stderr for oid in oids) and "2 of 3 objects" in result.stderr
    assert "remote origin" in result.stderr and "not fetched" in result.stderr
    assert "clone again" in result.stderr

    for path, blob in zip(remote_copies, good):  # the remote is repaired
        _rewrite(path, blob)
    modelgit(tmp_path, "clone", str(bare), str(clone))
    assert (clone / "model.safetensors").read_bytes() == data
    fetched = modelgit(clone, "fetch")
    assert "fetched 0 objects" in fetched.stdout


def test_a_damaged_local_object_is_quarantined_and_fetched_again_by_checkout(pushed, tmp_path):
    repo, bare, data = pushed
    clone = tmp_path / "clone"
    modelgit(tmp_path, "clone", str(bare), str(clone))
    oid = _chunk(clone, "HEAD", "a")
    local_store = clone / ".git" / "modelgit" / "store"
    _flip(_object(local_store, oid))
    (clone / "model.safetensors").unlink()
    result = git(clone, "checkout", "--", "model.safetensors")
    assert "fetched again" in result.stderr
    assert (clone / "model.safetensors").read_bytes() == data
    assert (local_store / "quarantine" / oid).exists()
    assert find_repo(str(clone)).store().verify() == []


def test_modelgit_checkout_fetches_again_a_damaged_object_after_the_remote_is_repaired(pushed, tmp_path):
    """The reported case: the damaged copy used to stay local, so `modelgit fetch` said
    "0 fetched" and the file kept its manifest."""
    repo, bare, data = pushed
    oids = [_chunk(repo, "HEAD", "a"), _chunk(repo, "HEAD", "b")]
    remote_copies = [_object(bare / "modelgit" / "store", oid) for oid in oids]
    good = [path.read_bytes() for path in remote_copies]
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--no-checkout", str(bare), str(clone))
    modelgit(clone, "init")
    for path in remote_copies:
        _flip(path)
    git(clone, "checkout", "-q", "main", env={**os.environ, "MODELGIT_SKIP_SMUDGE": "1"})
    failed = modelgit(clone, "checkout", check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert any(oid in failed.stderr for oid in oids)
    assert (clone / "model.safetensors").read_bytes().startswith(b"modelgit-manifest")
    for path, blob in zip(remote_copies, good):
        _rewrite(path, blob)
    modelgit(clone, "checkout")
    assert (clone / "model.safetensors").read_bytes() == data


def test_git_push_refuses_a_damaged_local_object_until_it_is_added_again(repo, tmp_path):
    data = _save(repo / "model.safetensors", a=float_weights(1, (300, 200)), b=float_weights(2, (64,)))
    git(repo, "add", "model.safetensors")
    git(repo, "commit", "-qm", "base")
    bare = tmp_path / "hub.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    oid = _chunk(repo, "HEAD", "a")
    store = repo / ".git" / "modelgit" / "store"
    _flip(_object(store, oid))
    result = git(repo, "push", "-q", "origin", "main", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert oid in result.stderr and "not uploaded" in result.stderr
    assert "git add --renormalize" in result.stderr
    assert not _object(bare / "modelgit" / "store", oid).exists()
    assert git(bare, "branch", "--list", "main").stdout == ""  # the refs did not move
    git(repo, "add", "--renormalize", "model.safetensors")  # the work tree has the checkpoint
    git(repo, "push", "-q", "origin", "main")
    assert find_repo(str(bare)).store().verify() == []
    clone = tmp_path / "clone"
    modelgit(tmp_path, "clone", str(bare), str(clone))
    assert (clone / "model.safetensors").read_bytes() == data


def test_push_replaces_damaged_remote_copies(pushed, tmp_path):
    repo, bare, data = pushed
    oid_a, oid_b = _chunk(repo, "HEAD", "a"), _chunk(repo, "HEAD", "b")
    remote_store = bare / "modelgit" / "store"
    truncated = _object(remote_store, oid_a)
    _rewrite(truncated, truncated.read_bytes()[:-7])
    _flip(_object(remote_store, oid_b))  # same size: only --verify-remote finds it
    plain = modelgit(repo, "push", "origin")
    assert "uploaded 1 objects" in plain.stdout and "1 damaged copies on the remote were replaced" in plain.stdout
    checked = modelgit(repo, "push", "origin", "--verify-remote")
    assert "uploaded 1 objects" in checked.stdout and "replaced" in checked.stdout
    assert find_repo(str(bare)).store().verify() == []
    clone = tmp_path / "clone"
    modelgit(tmp_path, "clone", str(bare), str(clone))
    assert (clone / "model.safetensors").read_bytes() == data
