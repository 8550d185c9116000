"""Running git and modelgit as subprocesses in tests."""

from __future__ import annotations

import subprocess


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
