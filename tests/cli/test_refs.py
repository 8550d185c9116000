"""Versions of one path are a history that gc keeps; manifest names are unambiguous."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modelgit import checkpoint
from modelgit.store import Store

from helpers import float_weights, write_safetensors


def _run(cwd, *args, check=True):
    env_result = subprocess.run([sys.executable, "-m", "modelgit", *args], cwd=cwd,
                                capture_output=True, text=True)
    if check:
        assert env_result.returncode == 0, env_result.stderr
    assert "Traceback" not in env_result.stderr
    return env_result


def _write(path, seed):
    write_safetensors(path, {"w": ("F32", (256, 256), float_weights(seed, (256, 256)).tobytes())})
    return path.read_bytes()


@pytest.fixture
def two_adds(tmp_path, monkeypatch):
    """`modelgit add model.safetensors` twice, as the README shows: (dir, v1 bytes, ref)."""
    monkeypatch.delenv("MODELGIT_STORE", raising=False)
    v1 = _write(tmp_path / "model.safetensors", 1)
    _run(tmp_path, "add", "model.safetensors")
    _write(tmp_path / "model.safetensors", 2)
    second = _run(tmp_path, "add", "model.safetensors", "--json")
    return tmp_path, v1, json.loads(second.stdout)


def test_an_earlier_version_is_kept_by_gc_and_named_ref_at_n(two_adds):
    work, v1, added = two_adds
    ref = added["ref"]
    assert added["versions"] == 2
    history = json.loads(_run(work, "refs", "--history", "--json").stdout)
    assert [row["ref"] for row in history] == [f"{ref}@{{0}}", f"{ref}@{{1}}"]
    gc = _run(work, "gc", "--prune=now").stdout
    assert "keep 1 earlier version" in gc
    _run(work, "materialize", f"{ref}@{{1}}", "-o", "v1.safetensors")
    assert (work / "v1.safetensors").read_bytes() == v1
    again = _run(work, "add", "model.safetensors", "--json").stdout  # unchanged: no new version
    assert json.loads(again)["versions"] == 2

    _run(work, "refs", "--expire", "now")
    _run(work, "gc", "--prune=now")
    gone = _run(work, "materialize", f"{ref}@{{1}}", "-o", "again.safetensors", check=False)
    assert gone.returncode == 2 and "has 1 version(s)" in gone.stderr


def test_a_checkpoint_named_as_a_manifest_says_so(two_adds):
    work, _, added = two_adds
    result = _run(work, "materialize", "model.safetensors", "-o", "out.safetensors", check=False)
    assert result.returncode == 2
    assert "is a checkpoint" in result.stderr and added["ref"] in result.stderr
    assert not (work / "out.safetensors").exists()
    assert _run(work, "ls", "model.safetensors", check=False).returncode == 2


def test_a_unique_id_prefix_names_a_manifest(two_adds):
    work, _, added = two_adds
    listed = _run(work, "ls", added["id"][:8]).stdout
    assert "w\tF32\t[256, 256]" in listed
    short = _run(work, "ls", added["id"][:6], check=False)
    assert short.returncode == 2 and "at least 8 hex digits" in short.stderr


def test_an_ambiguous_prefix_is_an_error_listing_the_candidates(store, tmp_path, monkeypatch):
    for name, seed in (("a", 1), ("b", 2)):
        _write(tmp_path / f"{name}.safetensors", seed)
        checkpoint.add(store, str(tmp_path / f"{name}.safetensors"), ref=name)
    ids = sorted([store.get_ref("a"), store.get_ref("b")])
    # two manifests whose ids share 10 digits would take ~2^40 tries to make: pretend they do
    monkeypatch.setattr(Store, "object_ids_with_prefix", lambda self, prefix, limit=20: ids)
    from modelgit.errors import UsageError

    with pytest.raises(UsageError, match=r"prefix of 2 manifest ids.*give more digits"):
        checkpoint.load_manifest(store, "abcdef0123")


def test_a_ref_from_before_histories_keeps_its_version_when_moved(store, tmp_path):
    _write(tmp_path / "m.safetensors", 1)
    old = store.put_blob(checkpoint.add(store, str(tmp_path / "m.safetensors")).dumps())
    store.backend.write_atomic("refs/legacy", (old + "\n").encode())  # no history, as before
    _write(tmp_path / "n.safetensors", 3)
    checkpoint.add(store, str(tmp_path / "n.safetensors"), ref="legacy")
    assert [e.manifest for e in store.ref_history("legacy")][1:] == [old]
    assert checkpoint.load_manifest(store, "legacy@{1}").dumps() == store.get(old)
    store.delete_ref("legacy")
    assert store.ref_history("legacy") == []
