"""Git plumbing the workflow needs: export a directory of a revision, commit files onto a branch
without touching the work tree, list what a commit changed, check the work tree is clean.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time

from ..errors import UsageError
from ..git.repo import GitError, GitRepo
from ..git.export import export_dir, list_tree, path_problem, write_new_file  # noqa: F401  (re-exported)

#: scratch directories older than this were left by a killed process
STALE_SCRATCH_SECONDS = 24 * 3600

__all__ = ["export_dir", "commit_files", "git_identity", "changed_paths", "require_clean", "parse_author",
           "list_tree", "path_problem", "write_new_file", "commit_edits"]


def parse_author(text: str) -> tuple[str, str]:
    """("Name", "email") from ``Name <email>``. Raises UsageError otherwise."""
    text = text.strip()
    if "<" in text and text.endswith(">"):
        name, email = text[:-1].split("<", 1)
        if name.strip() and "@" in email:
            return name.strip(), email.strip()
    raise UsageError(f"author {text!r} is not of the form 'Name <email@example.org>'")


def git_identity(repo: GitRepo) -> tuple[str, str]:
    """Who git would record as the author here (environment, then config), or UsageError."""
    out = repo.git("var", "GIT_AUTHOR_IDENT", check=False).decode().strip()
    if "<" not in out:
        raise UsageError("who are you? pass --author 'Name <email>' or set git config user.name "
                         "and user.email")
    return parse_author(out.rsplit(" ", 2)[0])


def _run(repo: GitRepo, args: list[str], env: dict, input: bytes | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=repo.root, env=env, input=input, capture_output=True)
    if result.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode().strip()


def commit_files(repo: GitRepo, parent: str, files: dict[str, str], message: str,
                 author: tuple[str, str] | None = None, remove: list[str] = ()) -> str:
    """A new commit on top of ``parent`` with ``files`` ({repo path: local file}) added or replaced
    and the paths in ``remove`` deleted; returns its id. The work tree, the index and every ref are
    left alone (a temporary index is used); files go through the repository's clean filters, so
    tracked checkpoints land in the store as they would with ``git add``.
    """
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="modelgit-index-") as tmp:
        env["GIT_INDEX_FILE"] = os.path.join(tmp, "index")
        _run(repo, ["read-tree", parent], env)
        if remove:
            _run(repo, ["rm", "--cached", "-r", "-q", "--ignore-unmatch", "--", *remove], env)
        lines = []
        for rel, source in sorted(files.items()):
            oid = _run(repo, ["hash-object", "-w", f"--path={rel}", source], env)
            lines.append(f"100644 {oid}\t{rel}")
        if lines:
            _run(repo, ["update-index", "--add", "--index-info"], env, ("\n".join(lines) + "\n").encode())
        tree = _run(repo, ["write-tree"], env)
        if author:
            env.update(GIT_AUTHOR_NAME=author[0], GIT_AUTHOR_EMAIL=author[1])
        return _run(repo, ["commit-tree", tree, "-p", parent, "-F", "-"], env, message.encode())


def commit_edits(repo: GitRepo, parent: str, message: str, files: dict[str, bytes] | None = None,
                 trees: dict[str, str] | None = None, merged: tuple[str, ...] = ()) -> str:
    """A new commit on top of ``parent``: its tree is ``parent``'s with each path of ``trees``
    replaced by that tree object (whatever was there before removed), and each path of
    ``files`` set to those bytes; ``merged`` commits are added as further parents. Returns its
    id; the work tree, the index and every ref are left alone (a temporary index is used).
    Paths are the caller's (checked) and taken literally, never as patterns."""
    env = dict(os.environ, GIT_LITERAL_PATHSPECS="1")
    with tempfile.TemporaryDirectory(prefix="modelgit-index-") as tmp:
        env["GIT_INDEX_FILE"] = os.path.join(tmp, "index")
        _run(repo, ["read-tree", parent], env)
        for path, tree in sorted((trees or {}).items()):
            _run(repo, ["rm", "--cached", "-r", "-q", "--ignore-unmatch", "--", path], env)
            _run(repo, ["read-tree", f"--prefix={path}/", tree], env)
        lines = []
        for path, data in sorted((files or {}).items()):
            oid = _run(repo, ["hash-object", "-w", "--stdin", f"--path={path}"], env, data)
            lines.append(f"100644 {oid}\t{path}")
        if lines:
            _run(repo, ["update-index", "--add", "--index-info"], env, ("\n".join(lines) + "\n").encode())
        tree = _run(repo, ["write-tree"], env)
        parents = [arg for commit in (parent, *merged) for arg in ("-p", commit)]
        return _run(repo, ["commit-tree", tree, *parents, "-F", "-"], env, message.encode())


def changed_paths(repo: GitRepo, old: str, new: str) -> list[str]:
    """Paths that differ between two commits (added, changed, deleted, renamed: both names)."""
    out = repo.git("diff", "--name-only", "--no-renames", "-z", old, new)
    return [p for p in out.decode().split("\0") if p]


def require_clean(repo: GitRepo, paths: list[str], what: str) -> None:
    """Raise UsageError when tracked files under ``paths`` have uncommitted changes."""
    out = repo.git("status", "--porcelain", "--untracked-files=no", "--", *paths).decode()
    if out.strip():
        changed = ", ".join(line[3:] for line in out.splitlines()[:5])
        raise UsageError(f"{what} needs a clean work tree, but these files have uncommitted "
                         f"changes: {changed}: commit or stash them first")


@contextlib.contextmanager
def scratch_dir(repo: GitRepo, prefix: str):
    """A temporary directory inside ``.git/modelgit`` (same file system as the store), removed
    afterwards."""
    from .._outputs import TEMPORARY_MARK, remove_stale_temporaries, temporary_path

    base = os.path.join(repo.git_dir, "modelgit", "tmp")
    os.makedirs(base, exist_ok=True)
    # left behind by a killed review, release or rebase (exported models: GBs): those of dead
    # processes at once, those named before processes were recorded after a day
    remove_stale_temporaries(base)
    for name in os.listdir(base):
        old = os.path.join(base, name)
        with contextlib.suppress(OSError):
            if TEMPORARY_MARK not in name and time.time() - os.path.getmtime(old) > STALE_SCRATCH_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
    path = temporary_path(os.path.join(base, prefix.rstrip("-")))
    os.makedirs(path, mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
