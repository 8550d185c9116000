"""Running git and modelgit as subprocesses in tests."""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(autouse=True)
def git_env(tmp_path, monkeypatch):
    """A private HOME and git identity: never read or write the user's global git config."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{var}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{var}_EMAIL", "test@example.invalid")
    monkeypatch.delenv("MODELGIT_STORE", raising=False)
    return home


def git(cwd, *args, check=True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def modelgit(cwd, *args, check=True) -> subprocess.CompletedProcess:
    import sys

    result = subprocess.run([sys.executable, "-m", "modelgit", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"modelgit {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result
