"""Real git repositories in temporary directories, with modelgit set up."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def git_env(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # never read or write the user's global git config
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{var}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{var}_EMAIL", "test@example.invalid")
    monkeypatch.delenv("MODELGIT_STORE", raising=False)
    return home


from gitutil import git, modelgit


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(path))
    modelgit(path, "init")
    modelgit(path, "track", "*.safetensors")
    git(path, "add", ".gitattributes")
    git(path, "commit", "-qm", "track safetensors")
    return path
