"""modelgit inside real git: commit, checkout, branch, merge, push, clone, fetch, diff, log."""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from modelgit.git.repo import find_repo
from modelgit.manifest import Manifest

from gitutil import git, modelgit
from helpers import float_weights


def _save(path, **tensors):
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path.read_bytes()


def _base():
    return {"layers.0.w": float_weights(1, (1500, 1000)), "layers.1.w": float_weights(2, (64, 64)),
            "norm": float_weights(3, (64,))}


def test_init_is_local_idempotent_and_keeps_existing_hooks(tmp_path, git_env):
    path = tmp_path / "r"
    git(tmp_path, "init", "-q", str(path))
    hook = path / ".git" / "hooks" / "pre-push"
    hook.write_text("#!/bin/sh\necho mine >> \"$(git rev-parse --git-dir)/hook-ran\"\n")
    hook.chmod(0o755)
    modelgit(path, "init")
    second = modelgit(path, "init")
    assert "already set up" in second.stdout
    assert not (git_env / ".gitconfig").exists()
    assert "filter-process" in git(path, "config", "--local", "filter.modelgit.process").stdout
    assert (path / ".git" / "hooks" / "pre-push.before-modelgit").read_text().count("mine") == 1
    modelgit(path, "track", "*.safetensors")
    modelgit(path, "track", "*.safetensors")
    assert (path / ".gitattributes").read_text().count("*.safetensors") == 1


def test_commit_stores_manifest_and_old_revisions_check_out_byte_exact(repo):
    v1 = _save(repo / "model.safetensors", **_base())
    git(repo, "add", "model.safetensors")
    git(repo, "commit", "-qm", "v1")
    blob = git(repo, "show", "HEAD:model.safetensors").stdout
    assert blob.startswith("modelgit-manifest 1\n") and len(blob) < 2000
    tensors = _base()
    tensors["layers.1.w"] = tensors["layers.1.w"] * 2
    v2 = _save(repo / "model.safetensors", **tensors)
    git(repo, "commit", "-qam", "v2")
    git(repo, "checkout", "-q", "HEAD~1")
    assert (repo / "model.safetensors").read_bytes() == v1
    git(repo, "checkout", "-q", "main")
    assert (repo / "model.safetensors").read_bytes() == v2
    assert git(repo, "status", "--porcelain").stdout == ""


def test_sharded_and_adapter_directories(repo):
    modelgit(repo, "track", "adapters/**/*.safetensors")
    shard_dir = repo / "model"
    shard_dir.mkdir()
    a = _save(shard_dir / "model-00001-of-00002.safetensors", w1=float_weights(1, (300, 300)))
    b = _save(shard_dir / "model-00002-of-00002.safetensors", w2=float_weights(2, (300, 300)))
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"w1": "model-00001-of-00002.safetensors", "w2": "model-00002-of-00002.safetensors"}}))
    adapter = repo / "adapters" / "alice"
    adapter.mkdir(parents=True)
    c = _save(adapter / "adapter_model.safetensors", **{"q.lora_A.weight": float_weights(3, (8, 300))})
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "shards and adapter")
    for rel in ["model/model-00001-of-00002.safetensors", "model/model-00002-of-00002.safetensors",
                "adapters/alice/adapter_model.safetensors"]:
        assert git(repo, "show", f"HEAD:{rel}").stdout.startswith("modelgit-manifest")
    shutil.rmtree(repo / "model")
    shutil.rmtree(repo / "adapters")
    git(repo, "checkout", "-q", "--", ".")
    assert (shard_dir / "model-00001-of-00002.safetensors").read_bytes() == a
    assert (shard_dir / "model-00002-of-00002.safetensors").read_bytes() == b
    assert (adapter / "adapter_model.safetensors").read_bytes() == c


def _branch_edit(repo, branch, start, **changes):
    git(repo, "checkout", "-q", "-b", branch, start)
    tensors = load_file(str(repo / "model.safetensors"))
    tensors.update(changes)
    _save(repo / "model.safetensors", **tensors)
    git(repo, "commit", "-qam", branch)


@pytest.fixture
def committed(repo):
    _save(repo / "model.safetensors", **_base())
    git(repo, "add", "model.safetensors")
    git(repo, "commit", "-qm", "base")
    return repo


def test_merge_takes_one_sided_changes(committed):
    repo = committed
    base = _base()
    _branch_edit(repo, "left", "main", norm=base["norm"] + 1)
    _branch_edit(repo, "right", "main", **{"layers.1.w": base["layers.1.w"] - 1})
    result = git(repo, "merge", "-m", "merge", "left")
    assert "1 tensors from ours, 1 from theirs" in result.stderr
    merged = load_file(str(repo / "model.safetensors"))
    np.testing.assert_array_equal(merged["norm"], base["norm"] + 1)
    np.testing.assert_array_equal(merged["layers.1.w"], base["layers.1.w"] - 1)
    np.testing.assert_array_equal(merged["layers.0.w"], base["layers.0.w"])


def test_two_sided_change_conflicts_without_strategy_and_merges_with_one(committed):
    repo = committed
    base = _base()
    _branch_edit(repo, "left", "main", norm=base["norm"] + 1)
    _branch_edit(repo, "right", "main", norm=base["norm"] + 3)
    result = git(repo, "merge", "-m", "merge", "left", check=False)
    assert result.returncode != 0
    assert "changed on both sides and no merge strategy is set" in result.stderr
    assert "modelgit.merge.strategy" in result.stderr
    git(repo, "merge", "--abort")
    git(repo, "-c", "modelgit.merge.strategy=task_arithmetic", "merge", "-m", "merge", "left")
    merged = load_file(str(repo / "model.safetensors"))
    np.testing.assert_allclose(merged["norm"], base["norm"] + 4, rtol=1e-6)


def test_strategy_from_gitattributes(committed):
    repo = committed
    with open(repo / ".gitattributes", "a") as handle:
        handle.write("model.safetensors modelgit-merge=average\n")
    git(repo, "commit", "-qam", "average merges")
    base = _base()
    _branch_edit(repo, "left", "main", norm=base["norm"] + 1)
    _branch_edit(repo, "right", "main", norm=base["norm"] + 3)
    git(repo, "merge", "-m", "merge", "left")
    np.testing.assert_allclose(load_file(str(repo / "model.safetensors"))["norm"], base["norm"] + 2, rtol=1e-6)


def test_shape_change_on_both_sides_is_a_conflict(committed):
    repo = committed
    base = _base()
    _branch_edit(repo, "left", "main", norm=np.zeros(65, np.float32))
    _branch_edit(repo, "right", "main", norm=np.zeros(66, np.float32))
    result = git(repo, "-c", "modelgit.merge.strategy=average", "merge", "-m", "m", "left", check=False)
    assert result.returncode != 0 and "shape or dtype changed on both sides" in result.stderr


def test_push_clone_fetch_with_separate_object_remote(committed, tmp_path):
    repo = committed
    v1 = (repo / "model.safetensors").read_bytes()
    tensors = _base()
    tensors["layers.0.w"] = float_weights(9, (1500, 1000))  # retrained: no delta against v1
    v2 = _save(repo / "model.safetensors", **tensors)
    git(repo, "commit", "-qam", "v2")
    bare, objects = tmp_path / "hub.git", tmp_path / "object-remote"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "config", "modelgit.remote.origin.store", str(objects))
    push = git(repo, "push", "-q", "origin", "main")
    assert "uploaded" in push.stderr
    assert not (bare / "modelgit").exists() and (objects / "objects").is_dir()

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--no-checkout", str(bare), str(clone))
    modelgit(clone, "init")
    git(clone, "config", "modelgit.remote.origin.store", str(objects))
    git(clone, "checkout", "-q", "main")
    assert (clone / "model.safetensors").read_bytes() == v2
    store = find_repo(str(clone)).store()
    head_ids = Manifest.loads(git(clone, "show", "HEAD:model.safetensors").stdout.encode()).object_ids()
    assert set(store.iter_objects()) >= head_ids
    old_ids = Manifest.loads(git(clone, "show", "HEAD~1:model.safetensors").stdout.encode()).object_ids()
    assert not all(store.has(oid) for oid in old_ids - head_ids)  # only what HEAD needed came
    modelgit(clone, "fetch", "HEAD~1")
    assert all(store.has(oid) for oid in old_ids)
    git(clone, "checkout", "-q", "HEAD~1")
    assert (clone / "model.safetensors").read_bytes() == v1


def test_modelgit_clone_and_pull_from_local_bare(committed, tmp_path):
    repo = committed
    bare = tmp_path / "hub.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "push", "-q", "origin", "main")
    modelgit(tmp_path, "clone", str(bare), "copy")
    assert (tmp_path / "copy" / "model.safetensors").read_bytes() == (repo / "model.safetensors").read_bytes()
    tensors = _base()
    tensors["norm"] = tensors["norm"] * 5
    v2 = _save(repo / "model.safetensors", **tensors)
    git(repo, "commit", "-qam", "v2")
    git(repo, "push", "-q", "origin", "main")
    git(tmp_path / "copy", "pull", "-q", "origin", "main")
    assert (tmp_path / "copy" / "model.safetensors").read_bytes() == v2


def test_missing_object_names_object_path_and_remote(committed, tmp_path):
    repo = committed
    bare = tmp_path / "hub.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "push", "-q", "origin", "main")
    objects = bare / "modelgit" / "store" / "objects"
    victim = Manifest.loads(git(repo, "show", "HEAD:model.safetensors").stdout.encode()).files[0].tensor("norm").chunks[0]
    (objects / victim[:2] / victim[2:]).unlink()
    clone = tmp_path / "c"
    result = modelgit(tmp_path, "clone", str(bare), str(clone), check=False)
    message = result.stderr
    assert victim in message and "model.safetensors" in message and str(bare) in message


def test_interrupted_push_resumes(committed, tmp_path, monkeypatch):
    from modelgit.git.transfer import push_objects
    from modelgit.store import Store

    repo = committed
    local = find_repo(str(repo)).store()
    remote = Store.open(str(tmp_path / "remote-store"), create=True)
    oids = Manifest.loads(git(repo, "show", "HEAD:model.safetensors").stdout.encode()).object_ids()
    # how a push writes: temporary files (or links), published in batches, committed even on
    # failure; here no link (as to another filesystem) and the third write fails
    original = remote.backend.write_temp
    calls = {"n": 0}

    def flaky(*parts):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("connection reset")
        return original(*parts)

    monkeypatch.setattr(remote.backend, "write_temp", flaky)
    monkeypatch.setattr(remote.backend, "link_temp", lambda source: None)
    with pytest.raises(Exception):
        push_objects(local, remote, oids)
    monkeypatch.setattr(remote.backend, "write_temp", original)
    sent_before = len(list(remote.iter_objects()))
    assert 0 < sent_before < len(oids)
    result = push_objects(local, remote, oids)
    assert result.skipped == sent_before and result.objects == len(oids) - sent_before
    assert not remote.verify()


def test_diff_and_log(committed):
    repo = committed
    tensors = _base()
    tensors["layers.1.w"] = tensors["layers.1.w"] * np.float32(1.5)
    tensors["extra"] = np.ones(3, np.float32)
    del tensors["norm"]
    _save(repo / "model.safetensors", **tensors)
    git(repo, "commit", "-qam", "edit\n\nModelgit-Recipe: recipes/edit.yaml")
    out = json.loads(modelgit(repo, "diff", "HEAD~1", "HEAD", "--json").stdout)
    (file_diff,) = out
    by_name = {t["name"]: t for t in file_diff["tensors"]}
    assert by_name["layers.1.w"]["status"] == "changed"
    assert by_name["layers.1.w"]["rel_l2"] == pytest.approx(0.5, rel=1e-4)
    assert by_name["layers.1.w"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert by_name["layers.1.w"]["frac_changed"] > 0.99
    assert by_name["extra"]["status"] == "added" and by_name["norm"]["status"] == "removed"
    assert "layers.0.w" not in by_name
    text = git(repo, "diff", "HEAD~1", "HEAD").stdout
    assert "1 changed, 1 added, 1 removed" in text and "layers.1.w" in text
    log = modelgit(repo, "log").stdout
    assert "recipe: recipes/edit.yaml" in log and "1 changed, 1 removed" in log


def test_worktree_diff(committed):
    repo = committed
    tensors = _base()
    tensors["norm"] = tensors["norm"] + 1
    _save(repo / "model.safetensors", **tensors)
    out = modelgit(repo, "diff").stdout
    assert "model.safetensors: 1 changed" in out and "norm" in out


def test_gc_in_a_repository_keeps_everything_git_reaches(committed):
    repo = committed
    v1 = (repo / "model.safetensors").read_bytes()
    tensors = _base()
    tensors["layers.0.w"] = float_weights(11, (1500, 1000))
    _save(repo / "model.safetensors", **tensors)
    git(repo, "commit", "-qam", "v2")
    tensors["norm"] = tensors["norm"] + 1
    _save(repo / "model.safetensors", **tensors)
    git(repo, "add", "model.safetensors")  # staged, not committed: the index is a root too
    store = find_repo(str(repo)).store()
    junk = store.put_blob(b"unreachable")
    modelgit(repo, "gc")
    assert store.has(junk)  # younger than the grace period
    modelgit(repo, "gc", "--prune=now")
    assert not store.has(junk)
    assert not store.verify()
    for rev in ("HEAD~1", "HEAD"):
        ids = Manifest.loads(git(repo, "show", f"{rev}:model.safetensors").stdout.encode()).object_ids()
        assert all(store.has(oid) for oid in ids)
    staged = Manifest.loads(git(repo, "show", ":model.safetensors").stdout.encode()).object_ids()
    assert all(store.has(oid) for oid in staged)
    git(repo, "stash", "-q")
    git(repo, "checkout", "-q", "HEAD~1")
    assert (repo / "model.safetensors").read_bytes() == v1


def test_unchanged_file_is_not_rehashed_by_the_filter(repo, tmp_path, monkeypatch):
    path = repo / "model.safetensors"
    _save(path, **_base())
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # an old mtime: not "racy"
    log = tmp_path / "modelgit.log"
    monkeypatch.setenv("MODELGIT_LOG", str(log))
    git(repo, "add", "model.safetensors")
    git(repo, "commit", "-qm", "v1")
    git(repo, "add", "--renormalize", ".")  # forces git to run clean on every tracked file again
    lines = log.read_text().splitlines()
    assert "hashed and stored" in lines[0]
    assert any("not re-hashed" in line for line in lines[1:])
    assert git(repo, "status", "--porcelain").stdout == ""


def test_merge_inputs_from_revisions(committed, tmp_path):
    repo = committed
    v1 = _base()
    tensors = _base()
    tensors["norm"] = tensors["norm"] + 2
    _save(repo / "model.safetensors", **tensors)
    git(repo, "commit", "-qam", "v2")
    out = tmp_path / "merged"
    modelgit(repo, "merge", "--method", "linear", "--model", "model.safetensors@HEAD~1",
             "--model", "model.safetensors@HEAD", "-o", str(out))
    merged = load_file(str(out / "model.safetensors"))
    np.testing.assert_allclose(merged["norm"], v1["norm"] + 1, rtol=1e-6)
    np.testing.assert_array_equal(merged["layers.0.w"], v1["layers.0.w"])


@pytest.mark.parametrize("strategy, expected", [("average", 2.0), ("task_arithmetic", 4.0)])
def test_a_merged_tensor_is_stored_as_recipes_over_the_sides_chunks(committed, strategy, expected):
    from modelgit.store.derived import DERIVED

    repo = committed
    base = _base()
    _branch_edit(repo, "left", "main", norm=base["norm"] + 1)
    _branch_edit(repo, "right", "main", norm=base["norm"] + 3)
    git(repo, "-c", f"modelgit.merge.strategy={strategy}", "merge", "-m", "merge", "left")
    merged = load_file(str(repo / "model.safetensors"))
    np.testing.assert_allclose(merged["norm"], base["norm"] + expected, rtol=1e-6)
    found = find_repo(str(repo))
    manifest = Manifest.loads(found.git("show", "HEAD:model.safetensors"), "merged")
    store = found.store()
    norm = next(t for t in manifest.files[0].tensors if t.name == "norm")
    head = store.header(norm.chunks[0])
    assert head.encoding is DERIVED  # a recipe over ours, theirs (and the base): no delta
    assert store.stored_size(norm.chunks[0]) < 600
    store.drop_derived_cache()
    assert store.get(norm.chunks[0]) == merged["norm"].tobytes()
