"""Unknown revisions are errors, in every command that takes one, naming what does exist; a
revision can never be read as an option of git's."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from gitutil import git, modelgit
from helpers import float_weights


def _save(path, **tensors):
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))


@pytest.fixture
def two_versions(repo, tmp_path):
    """The repository with three commits (track, v1, v2), a tag v1 and a bare remote origin."""
    _save(repo / "model.safetensors", w=float_weights(1, (64, 64)))
    git(repo, "add", "model.safetensors")
    git(repo, "commit", "-qm", "v1")
    git(repo, "tag", "v1")
    _save(repo / "model.safetensors", w=float_weights(2, (64, 64)))
    git(repo, "commit", "-qam", "v2")
    bare = tmp_path / "hub.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    return repo


def _refused(repo, *args, expect: str):
    result = modelgit(repo, *args, check=False)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert expect in result.stderr, (args, result.stderr)
    assert "Traceback" not in result.stderr and "no model changes" not in result.stdout
    return result.stderr


@pytest.mark.parametrize("args, expect", [
    (("diff", "mian", "HEAD"), "did you mean 'main'"),
    (("diff", "HEAD~1", "nosuchbranch"), "'nosuchbranch'"),
    (("diff", "HEAD~99"), "oldest is HEAD~2"),
    (("diff", "v2"), "did you mean 'v1'"),
    (("diff", "HEAD", "no-such-file.safetensors"), "'no-such-file.safetensors'"),
    (("log", "mian"), "did you mean 'main'"),
    (("log", "HEAD", "nosuch"), "no such path"),
    (("fetch", "mian"), "did you mean 'main'"),
    (("fetch", "HEAD", "nosuch"), "no modelgit-tracked file"),
    (("push", "origin", "HEAD~99"), "oldest is HEAD~2"),
    (("checkout", "v1"), "git checkout v1"),
    (("merge", "--method", "linear", "--model", "model.safetensors@mian", "--model",
      "model.safetensors@HEAD", "-o", "out"), "did you mean 'main'"),
])
def test_an_unknown_revision_is_an_error_naming_what_exists(two_versions, args, expect):
    _refused(two_versions, *args, expect=expect)


def test_known_revisions_and_paths_still_work(two_versions):
    repo = two_versions
    assert "model.safetensors: 1 changed" in modelgit(repo, "diff", "v1", "main").stdout
    assert "model.safetensors: 1 changed" in modelgit(repo, "diff", "HEAD~1", "model.safetensors").stdout
    assert modelgit(repo, "diff", "HEAD").stdout.strip() == "no model changes"
    log = modelgit(repo, "log", "v1", "model.safetensors").stdout
    assert "v1" in log and "v2" not in log
    assert "fetched" in modelgit(repo, "fetch", "v1", "model.safetensors").stdout


def test_a_revision_is_never_taken_as_an_option(two_versions, tmp_path):
    target = tmp_path / "written-by-git"
    for rev in (f"--output={target}", "--all", "-h"):
        result = modelgit(two_versions, "diff", "--", rev, "HEAD", check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "unknown revision" in result.stderr
        result = modelgit(two_versions, "fetch", "--", rev, check=False)
        assert result.returncode == 2 and "unknown revision" in result.stderr, result.stderr
    assert not target.exists()
