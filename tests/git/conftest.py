"""Real git repositories in temporary directories, with modelgit set up."""

from __future__ import annotations

import pytest

from gitutil import git, git_env, modelgit  # noqa: F401  (git_env: autouse)


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(path))
    modelgit(path, "init")
    modelgit(path, "track", "*.safetensors")
    git(path, "add", ".gitattributes")
    git(path, "commit", "-qm", "track safetensors")
    return path
