"""`modelgit install`: once per user, and plain git clone, pull, push, diff just work; uninstall
removes only what it wrote. Every test has its own HOME and GIT_CONFIG_GLOBAL: the real user's
global config is never read or written."""

import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gitutil import git, modelgit
from helpers import float_weights


@pytest.fixture
def global_config(tmp_path, monkeypatch):
    path = tmp_path / "home" / "private-gitconfig"
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(path))
    return path


def _save(path, **tensors):
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path.read_bytes()


@pytest.fixture
def hub(tmp_path, global_config):
    """A bare remote holding one commit of a modelgit repository pushed by its author (set up
    with `modelgit init`, before anything is installed globally): (bare path, file bytes)."""
    author = tmp_path / "author"
    git(tmp_path, "init", "-q", "-b", "main", str(author))
    modelgit(author, "init")
    modelgit(author, "track", "*.safetensors")
    data = _save(author / "model.safetensors", w=float_weights(1, (400, 300)), b=float_weights(2, (64,)))
    git(author, "add", ".gitattributes", "model.safetensors")
    git(author, "commit", "-qm", "base")
    bare = tmp_path / "hub.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(author, "remote", "add", "origin", str(bare))
    git(author, "push", "-q", "origin", "main")
    assert not global_config.exists()
    return bare, data


def test_without_install_a_plain_clone_checks_out_manifests(hub, tmp_path):
    bare, _ = hub
    git(tmp_path, "clone", "-q", str(bare), str(tmp_path / "plain"))
    assert (tmp_path / "plain" / "model.safetensors").read_bytes().startswith(b"modelgit-manifest")


def test_after_install_plain_git_clone_pull_push_and_diff_work(hub, tmp_path, global_config):
    bare, data = hub
    first = modelgit(tmp_path, "install")
    assert "set filter.modelgit.process (global)" in first.stdout
    text = global_config.read_text()
    assert "filter-process" in text and "git-diff" in text and "merge-driver" in text
    assert "already installed" in modelgit(tmp_path, "install").stdout  # idempotent

    clone = tmp_path / "clone"
    cloned = git(tmp_path, "clone", "-q", str(bare), str(clone))
    assert (clone / "model.safetensors").read_bytes() == data
    assert "installed hook pre-push" in cloned.stderr  # by the checkout's filter, as git-lfs does
    assert "# installed by modelgit" in (clone / ".git" / "hooks" / "pre-push").read_text()
    assert git(clone, "config", "--local", "--get", "filter.modelgit.process", check=False).stdout == ""
    assert git(clone, "status", "--porcelain").stdout == ""

    tensors = load_file(str(clone / "model.safetensors"))
    tensors["w"] = tensors["w"] * np.float32(1.01)
    v2 = _save(clone / "model.safetensors", **tensors)
    git(clone, "commit", "-qam", "fine-tune")
    assert "diff --modelgit" in git(clone, "diff", "HEAD~1").stdout  # the global diff driver
    pushed = git(clone, "push", "-q", "origin", "main")  # the hook uploads the objects
    assert "uploaded" in pushed.stderr

    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(bare), str(other))
    assert (other / "model.safetensors").read_bytes() == v2
    git(clone, "reset", "-q", "--hard", "HEAD~1")
    git(clone, "pull", "-q", "origin", "main")
    assert (clone / "model.safetensors").read_bytes() == v2


def test_uninstall_removes_only_what_install_wrote(hub, tmp_path, global_config):
    bare, _ = hub
    git(tmp_path, "config", "--global", "user.signingkey", "KEEPME")
    git(tmp_path, "config", "--global", "diff.modelgit.textconv", "cat")  # not modelgit's key
    modelgit(tmp_path, "install")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    removed = modelgit(clone, "install", "--uninstall")  # inside a repository: its hook too
    assert "removed filter.modelgit.process (global)" in removed.stdout
    assert "removed hook pre-push" in removed.stdout
    text = global_config.read_text()
    assert "filter-process" not in text and "[filter" not in text and "[merge" not in text
    assert "KEEPME" in text and "textconv = cat" in text  # its section stays for the user's key
    assert not (clone / ".git" / "hooks" / "pre-push").exists()
    again = modelgit(tmp_path, "install", "--uninstall")
    assert "nothing of modelgit's" in again.stdout
    fresh = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", str(bare), str(fresh))  # back to manifests
    assert (fresh / "model.safetensors").read_bytes().startswith(b"modelgit-manifest")


def test_install_refuses_to_replace_settings_it_did_not_write(tmp_path, global_config):
    git(tmp_path, "config", "--global", "filter.modelgit.process", "my-own-filter")
    result = modelgit(tmp_path, "install", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "filter.modelgit.process = my-own-filter" in result.stderr and "--force" in result.stderr
    assert "my-own-filter" in global_config.read_text()
    modelgit(tmp_path, "install", "--force")
    assert "my-own-filter" not in global_config.read_text()
    uninstalled = modelgit(tmp_path, "install", "--uninstall")
    assert "removed filter.modelgit.process" in uninstalled.stdout


def test_local_install_and_uninstall_keep_the_users_hook(tmp_path, global_config):
    repo = tmp_path / "r"
    git(tmp_path, "init", "-q", str(repo))
    hook = repo / ".git" / "hooks" / "pre-push"
    hook.write_text("#!/bin/sh\necho mine\n")
    hook.chmod(0o755)
    outside = modelgit(tmp_path, "install", "--local", check=False)
    assert outside.returncode == 2 and "not inside a git repository" in outside.stderr
    modelgit(repo, "install", "--local")
    assert not global_config.exists()
    assert "filter-process" in git(repo, "config", "--local", "filter.modelgit.process").stdout
    assert (repo / ".git" / "hooks" / "pre-push.before-modelgit").read_text() == "#!/bin/sh\necho mine\n"
    modelgit(repo, "install", "--local", "--uninstall")
    assert git(repo, "config", "--local", "--get", "filter.modelgit.process", check=False).stdout == ""
    assert hook.read_text() == "#!/bin/sh\necho mine\n"  # put back in its place
    assert not (repo / ".git" / "hooks" / "pre-push.before-modelgit").exists()


def test_the_filter_never_touches_a_users_hook_nor_a_shared_hooks_path(hub, tmp_path):
    bare, data = hub
    modelgit(tmp_path, "install")
    shared = tmp_path / "shared-hooks"
    shared.mkdir()
    clone = tmp_path / "clone"
    git(tmp_path, "-c", f"core.hooksPath={shared}", "clone", "-q", "--config",
        f"core.hooksPath={shared}", str(bare), str(clone))
    assert (clone / "model.safetensors").read_bytes() == data
    assert list(shared.iterdir()) == [] and not (clone / ".git" / "hooks" / "pre-push").exists()
    mine = tmp_path / "mine"
    git(tmp_path, "clone", "-q", "--no-checkout", str(bare), str(mine))
    (mine / ".git" / "hooks" / "pre-push").write_text("#!/bin/sh\nexit 0\n")
    git(mine, "checkout", "-q", "main")
    assert (mine / "model.safetensors").read_bytes() == data
    assert (mine / ".git" / "hooks" / "pre-push").read_text() == "#!/bin/sh\nexit 0\n"


def test_a_plain_clone_whose_objects_are_missing_fails_its_checkout_and_recovers(hub, tmp_path):
    """filter.modelgit.required: git stops the checkout rather than leave a manifest where a
    checkpoint belongs, says so, and `git checkout -f HEAD` writes it once the objects are there."""
    bare, data = hub
    modelgit(tmp_path, "install")
    store = bare / "modelgit" / "store"
    os.rename(store, tmp_path / "away")
    clone = tmp_path / "clone"
    result = git(tmp_path, "clone", "-q", str(bare), str(clone), check=False)
    assert result.returncode != 0 and "Clone succeeded, but checkout failed" in result.stderr
    assert "could not be fetched" in result.stderr and "Traceback" not in result.stderr
    os.rename(store, tmp_path / "empty")  # the fetch created an empty one
    os.rename(tmp_path / "away", store)
    git(clone, "checkout", "-qf", "HEAD")
    assert (clone / "model.safetensors").read_bytes() == data
