"""Running git and modelgit as subprocesses in tests."""

from __future__ import annotations

import subprocess

import pytest


def private_git_env(patch: pytest.MonkeyPatch, root):
    """Set, through ``patch``, a private HOME (``root/home``, created) and git identity, and no
    MODELGIT_STORE: never read or write the user's global git config. Returns the HOME.
    For fixtures wider than a test: ``with pytest.MonkeyPatch.context() as patch:``."""
    home = root / "home"
    home.mkdir()
    patch.setenv("HOME", str(home))
    patch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("AUTHOR", "COMMITTER"):
        patch.setenv(f"GIT_{var}_NAME", "Test")
        patch.setenv(f"GIT_{var}_EMAIL", "test@example.invalid")
    patch.delenv("MODELGIT_STORE", raising=False)
    return home


@pytest.fixture(autouse=True)
def git_env(tmp_path, monkeypatch):
    """A private HOME and git identity for each test (see :func:`private_git_env`)."""
    return private_git_env(monkeypatch, tmp_path)


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
