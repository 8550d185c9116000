"""Export a directory of a revision without the work tree: modelgit-tracked checkpoints
materialized from the store (objects fetched from the remotes first), other files as git has
them, every path checked before anything is written.

Used by the workflow (review, rebase) and by the adapter library of a release (route), which
must not import the workflow layer.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from .._files import write_all
from ..errors import UsageError
from ..manifest import is_manifest, Manifest
from .repo import GitRepo

__all__ = ["export_dir", "list_tree", "path_problem", "write_new_file"]


def path_problem(path: str) -> str | None:
    """Why ``path`` (``/``-separated, from a git tree) must not be written below a directory,
    or None when it is a plain relative path: no empty, ``.`` or ``..`` component, no ``.git``
    (in any case, as Windows and macOS file systems fold it), no absolute path, backslash, NUL
    or control character, no component over 255 bytes."""
    if not path or len(path) > 4096:
        return f"{path[:80]!r}: an empty or overlong path"
    if path.startswith("/") or "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        return f"{path[:200]!r}: absolute, or holds a backslash or a control character"
    for part in path.split("/"):
        if part in ("", ".", "..") or part.lower().rstrip(". ") == ".git" or len(part.encode()) > 255:
            return f"{path[:200]!r}: the component {part[:40]!r} would point outside the directory"
    return None


def list_tree(repo: GitRepo, rev: str, path: str) -> list[tuple[str, str, str, str]]:
    """(mode, kind, object id, path) of every entry below ``path`` in ``rev``: blobs (files and
    symbolic links) and commits (submodules)."""
    out = repo.git("ls-tree", "-r", "-z", "--full-tree", rev, "--", path)
    entries = []
    for item in out.split(b"\0"):
        if item:
            meta, name = item.split(b"\t", 1)
            mode, kind, oid = meta.decode().split()
            entries.append((mode, kind, oid, name.decode("utf-8", errors="replace")))
    return entries


def write_new_file(path: str, data: bytes) -> None:
    """Create ``path`` and write ``data``: never through a symbolic link, never over an existing
    file (O_CREAT | O_EXCL | O_NOFOLLOW)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                 0o644)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def export_dir(repo: GitRepo, rev: str, path: str, dest: str, progress: bool | None = False) -> str:
    """Write the files below ``path`` in ``rev`` to the directory ``dest`` (created, must not
    exist): modelgit-tracked checkpoints materialized from the store (objects fetched from the
    remotes first), other files as git has them. Nothing goes through the work tree, and every
    path is checked before anything is written (see :func:`path_problem`).

    Raises:
        UsageError: ``rev`` has nothing at ``path``, or an entry that cannot be exported safely
            (a symbolic link, a submodule, a path with ``..`` or ``.git``).
        ObjectMissingError: an object is neither local nor on any remote.
    """
    from .. import checkpoint
    from ..git.history import fetch_rev
    from ..git.transfer import retry_after_repair

    entries = list_tree(repo, rev, path)
    if not entries:
        raise UsageError(f"revision {rev} has no files under {path}/")
    prefix = path.rstrip("/") + "/"
    problems = []
    for mode, kind, _oid, name in entries:
        rel = name[len(prefix):] if name.startswith(prefix) else None
        problem = path_problem(rel) if rel is not None else f"{name[:200]!r}: outside {prefix}"
        if problem is None and (kind != "blob" or mode not in ("100644", "100755")):
            problem = f"{name[:200]!r}: a {'symbolic link' if mode == '120000' else kind} (mode {mode})"
        if problem:
            problems.append(problem)
    if problems:
        raise UsageError(f"{rev}:{path} cannot be exported safely: {'; '.join(problems[:5])}")
    fetch_rev(repo, rev, paths=[path], progress=progress)
    store = repo.store()
    tmp = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(os.path.abspath(dest)))
    try:
        for mode, _kind, oid, name in entries:
            target = os.path.join(tmp, *name[len(prefix):].split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            data = repo.read_blob(oid)
            if is_manifest(data):
                manifest = Manifest.loads(data, f"{rev}:{name}")
                # a damaged local object (moved to quarantine when read) is fetched again
                retry_after_repair(repo, store, manifest.object_ids(), f"{rev}:{name}",
                                   lambda: checkpoint.materialize(store, manifest, target,
                                                                  force=True, progress=progress))
            else:
                write_new_file(target, data)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
