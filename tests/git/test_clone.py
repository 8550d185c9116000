"""`modelgit clone` on git's defaults: it follows the branch that exists, and a clone that fails
leaves nothing behind, so that running it again works."""

from __future__ import annotations

import os
import subprocess

import pytest
from safetensors.numpy import save_file

from gitutil import git, modelgit
from helpers import float_weights


@pytest.fixture
def master_hub(repo, tmp_path):
    """A bare hub made by plain `git init --bare` (HEAD names master) that got only `main`."""
    save_file({"w": float_weights(1, (64, 64))}, str(repo / "model.safetensors"))
    git(repo, "add", "model.safetensors")
    git(repo, "commit", "-qm", "v1")
    bare = tmp_path / "hub.git"
    git(tmp_path, "-c", "init.defaultBranch=master", "init", "-q", "--bare", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "push", "-q", "origin", "main")
    assert git(bare, "symbolic-ref", "HEAD").stdout.strip() == "refs/heads/master"
    return bare


def test_clone_follows_the_branch_that_exists(repo, master_hub, tmp_path):
    modelgit(tmp_path, "clone", str(master_hub), "work")
    work = tmp_path / "work"
    assert (work / "model.safetensors").read_bytes() == (repo / "model.safetensors").read_bytes()
    assert git(work, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == "main"
    assert git(work, "rev-parse", "--abbrev-ref", "main@{upstream}").stdout.strip() == "origin/main"
    assert git(work, "status", "--porcelain").stdout == ""


def test_a_failed_clone_leaves_nothing_and_can_be_retried(repo, master_hub, tmp_path):
    typo = modelgit(tmp_path, "clone", str(master_hub), "work", "-b", "mian", check=False)
    assert typo.returncode == 2 and "did you mean 'main'" in typo.stderr, typo.stderr
    assert "Traceback" not in typo.stderr
    assert sorted(os.listdir(tmp_path)) == ["home", "hub.git", "repo"]

    objects = master_hub / "modelgit" / "store" / "objects"  # the tensors cannot be fetched
    hidden = tmp_path / "objects-elsewhere"
    os.rename(objects, hidden)
    failed = modelgit(tmp_path, "clone", str(master_hub), "work", check=False)
    assert failed.returncode == 1 and "Nothing was kept" in failed.stderr, failed.stderr
    assert sorted(os.listdir(tmp_path)) == ["home", "hub.git", "objects-elsewhere", "repo"]

    os.rename(hidden, objects)
    modelgit(tmp_path, "clone", str(master_hub), "work")  # the retry just works
    assert (tmp_path / "work" / "model.safetensors").read_bytes() == \
        (repo / "model.safetensors").read_bytes()


def test_a_clone_killed_midway_is_cleared_by_the_next(repo, master_hub, tmp_path):
    """What a killed clone left (its temporary, named by its dead process) goes with the next."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".work.modelgit-tmp-{dead.pid}.1-0123abcd"
    (leftover / ".git").mkdir(parents=True)
    modelgit(tmp_path, "clone", str(master_hub), "work")
    assert not leftover.exists() and (tmp_path / "work" / "model.safetensors").is_file()


def test_clone_refuses_a_destination_that_is_not_empty(master_hub, tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mine.txt").write_text("keep me")
    result = modelgit(tmp_path, "clone", str(master_hub), "work", check=False)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert os.listdir(tmp_path / "work") == ["mine.txt"]
    (tmp_path / "work" / "mine.txt").unlink()  # an empty directory is fine, as for git
    modelgit(tmp_path, "clone", str(master_hub), "work")
    assert (tmp_path / "work" / "model.safetensors").is_file()


def test_clone_of_a_hub_with_several_branches_and_no_head_asks_for_one(repo, tmp_path):
    save_file({"w": float_weights(1, (8, 8))}, str(repo / "model.safetensors"))
    git(repo, "add", "model.safetensors")
    git(repo, "commit", "-qm", "v1")
    bare = tmp_path / "hub.git"
    git(tmp_path, "-c", "init.defaultBranch=master", "init", "-q", "--bare", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "push", "-q", "origin", "main:dev", "main:stable")
    result = modelgit(tmp_path, "clone", str(bare), "work", check=False)
    assert result.returncode == 2 and "dev, stable" in result.stderr and "-b BRANCH" in result.stderr
    assert not (tmp_path / "work").exists()
    modelgit(tmp_path, "clone", str(bare), "work", "-b", "stable")
    assert (tmp_path / "work" / "model.safetensors").is_file()
