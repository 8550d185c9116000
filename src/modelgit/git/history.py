"""Repository-level operations: push/fetch objects for revisions, diff revisions, log a model."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from .. import checkpoint
from ..errors import UsageError
from ..manifest import Manifest
from .diff import FileDiff, diff_manifests
from .repo import GitRepo
from .transfer import TransferResult, fetch_objects, open_remote_store, push_objects, remotes_for_fetch

__all__ = ["live_manifests", "index_manifests", "objects_to_push", "pre_push", "push_rev", "fetch_rev", "diff_revs", "log_path",
           "worktree_manifests", "LogEntry"]

ZERO = "0" * 40


def _manifest_blobs(repo: GitRepo, rev_args: list[str]) -> dict[str, Manifest]:
    """Manifests among the blobs listed by ``git rev-list --objects REV_ARGS``."""
    out = repo.git("rev-list", "--objects", *rev_args).decode().splitlines()
    pairs = []
    for line in out:
        oid, _, path = line.partition(" ")
        if path:
            pairs.append((path, oid))
    if not pairs:
        return {}
    check = repo.git("cat-file", "--batch-check", input="".join(f"{o}\n" for _, o in pairs).encode())
    blobs = []
    for (path, oid), info in zip(pairs, check.decode().splitlines()):
        parts = info.split()
        if len(parts) == 3 and parts[1] == "blob" and int(parts[2]) < 64 * 2**20:
            blobs.append((f"{path}@{oid}", oid))
    return repo.read_manifests(blobs)


def live_manifests(repo: GitRepo) -> list[Manifest]:
    """Every manifest git can still reach: all refs, reflogs, the index (roots for ``gc``)."""
    return list(_manifest_blobs(repo, ["--all", "--reflog", "--indexed-objects"]).values())


def index_manifests(repo: GitRepo) -> dict[str, Manifest]:
    """The manifests in the index of every work tree, as ``{"PATH@BLOB": manifest}``: what is
    checked out or staged, which a checkout or the next commit needs."""
    return _manifest_blobs(repo, ["--indexed-objects"])


def objects_to_push(repo: GitRepo, local_sha: str, remote: str) -> set[str]:
    manifests = _manifest_blobs(repo, [local_sha, "--not", f"--remotes={remote}"])
    return set().union(*(m.object_ids() for m in manifests.values())) if manifests else set()


def pre_push(repo: GitRepo, remote: str, lines: list[str], progress: bool | None = None) -> TransferResult:
    """The pre-push hook: upload the objects of every manifest the push sends (verified; see
    :func:`~modelgit.git.transfer.push_objects`)."""
    oids: set[str] = set()
    for line in lines:
        parts = line.split()
        if len(parts) == 4 and parts[1] != ZERO:
            oids |= objects_to_push(repo, parts[1], remote)
    if not oids:
        return TransferResult(0, 0, 0)
    return push_objects(repo.store(), open_remote_store(repo, remote), oids, progress, name=remote)


def push_rev(repo: GitRepo, remote: str, rev: str = "HEAD", progress: bool | None = None,
             verify_remote: bool = False) -> TransferResult:
    """Upload every object the manifests of ``rev``'s tree need (all history: use pre_push).

    Args:
        verify_remote: verify every copy the remote already has and replace damaged ones.
    """
    manifests = repo.tracked_manifests(repo.resolve(rev))
    oids = set().union(*(m.object_ids() for m in manifests.values())) if manifests else set()
    return push_objects(repo.store(), open_remote_store(repo, remote), oids, progress,
                        verify_remote=verify_remote, name=remote)


def fetch_rev(repo: GitRepo, rev: str = "HEAD", remote: str | None = None,
              paths: list[str] | None = None, progress: bool | None = None,
              check_paths: bool = False) -> TransferResult:
    """Download the objects the manifests of ``rev`` need (``modelgit fetch``).

    Args:
        check_paths: refuse a path below which ``rev`` tracks no checkpoint (a typo), instead
            of fetching nothing for it.
    Raises:
        UnknownRevisionError: ``rev`` names no commit.
        UsageError: with ``check_paths``, a path holds no modelgit-tracked file in ``rev``.
    """
    commit = repo.resolve(rev)
    manifests = repo.tracked_manifests(commit, paths)
    for path in paths if check_paths and paths else []:
        if not any(_below(found, path) for found in manifests):
            raise UsageError(f"{path!r}: no modelgit-tracked file there in revision {rev} "
                             f"(tracked: {', '.join(sorted(repo.tracked_manifests(commit))[:5]) or 'none'})")
    store = repo.store()
    oids = set().union(*(m.object_ids() for m in manifests.values())) if manifests else set()
    return fetch_objects(store, remotes_for_fetch(repo, remote), oids, progress, context=rev)


def _below(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or inside the directory ``prefix`` (both repository-relative)."""
    prefix = prefix.rstrip("/")
    return prefix in ("", ".") or path == prefix or path.startswith(prefix + "/")


def tracked_paths(repo: GitRepo) -> list[str]:
    """Work-tree paths whose ``filter`` attribute is modelgit."""
    files = repo.git("ls-files", "-z").decode().split("\0")
    files = [f for f in files if f]
    if not files:
        return []
    out = repo.git("check-attr", "-z", "--stdin", "filter", input="\0".join(files).encode() + b"\0")
    fields = out.decode().split("\0")
    return [fields[i] for i in range(0, len(fields) - 2, 3) if fields[i + 2] == "modelgit"]


def worktree_manifests(repo: GitRepo, paths: list[str] | None = None) -> dict[str, Manifest]:
    """Manifests of the tracked files as they are in the work tree (stat cache keeps it cheap)."""
    store = repo.store()
    out = {}
    for path in tracked_paths(repo):
        if paths and not any(_below(path, p) for p in paths):
            continue
        full = os.path.join(repo.root, path)
        if os.path.isfile(full):
            with open(full, "rb") as handle:
                head = handle.read(32)
            if head.startswith(b"modelgit-manifest "):
                out[path] = checkpoint.load_manifest(None, full)
            else:
                out[path] = checkpoint.add(store, full, progress=False)
    return out


def diff_revs(repo: GitRepo, old_rev: str | None, new_rev: str | None,
              paths: list[str] | None = None) -> list[FileDiff]:
    """Tensor diffs between two revisions (``None`` as ``new_rev`` means the work tree).

    Raises:
        UnknownRevisionError: a revision names no commit (naming the closest branch or tag).
    """
    old_commit = repo.resolve(old_rev) if old_rev else None
    new_commit = repo.resolve(new_rev) if new_rev else None
    old = repo.tracked_manifests(old_commit, paths) if old_commit else {}
    new = repo.tracked_manifests(new_commit, paths) if new_commit else worktree_manifests(repo, paths)
    store = repo.store()
    needed = set()
    for manifest in [*old.values(), *new.values()]:
        needed |= {oid for oid in manifest.object_ids() if not store.has(oid)}
    if needed:
        fetch_objects(store, remotes_for_fetch(repo), needed, progress=False, context="diff")
    out = []
    for path in sorted(set(old) | set(new)):
        if old.get(path) != new.get(path):
            out.extend(diff_manifests(store, path, old.get(path), new.get(path)))
    return out


@dataclass
class LogEntry:
    commit: str
    author: str
    date: str
    subject: str
    diffs: list[FileDiff]
    recipe: str | None


# the workflow's release records (``releases/<tag>.json``, named by a ``Modelgit-Release: TAG``
# trailer) are read as files, by this convention, never through the workflow's code
_RELEASES_DIR = "releases"
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _release_recipe(repo: GitRepo, commit: str, tag: str) -> str | None:
    """How release ``tag`` was made, from its record in ``commit``: the merge method and its
    parameters, or that it is the base model; None when there is no readable record."""
    if not _PLAIN.match(tag):
        return None
    where = f"{_RELEASES_DIR}/{tag}.json"
    data = repo.read_blob(f"{commit}:{where}")
    try:
        record = json.loads(data) if data is not None and len(data) < 4 * 2**20 else None
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    method, params = record.get("method"), record.get("parameters")
    if not method:
        return f"none: release {tag} is the base model ({where})"
    if not isinstance(method, str) or not _PLAIN.match(method):
        return None
    shown = json.dumps(params, sort_keys=True)[:200] if isinstance(params, dict) and params else ""
    count = len(record.get("contributions") or [])
    return (f"{method}{' ' + shown if shown else ''} of {count} contribution(s) "
            f"(release {tag}: {where})")


def _recipe_of(repo: GitRepo, commit: str) -> str | None:
    """What made a commit's model: a ``Modelgit-Recipe: PATH`` trailer, a release's record (a
    ``Modelgit-Release: TAG`` trailer), or a recipe file committed with it; None when nothing says."""
    body = repo.git("log", "-1", "--format=%B", commit).decode(errors="replace")
    release = None
    for line in body.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key.strip().lower() == "modelgit-recipe" and value and value.lower() not in ("none", "null"):
            return value
        if key.strip().lower() == "modelgit-release" and value:
            release = value
    if release:
        described = _release_recipe(repo, commit, release)
        if described:
            return described
    changed = repo.git("diff-tree", "--no-commit-id", "--name-only", "-r", "--root", commit).decode().split()
    recipes = [p for p in changed if p.endswith((".recipe.yaml", "recipe.yaml", "mergekit.yaml"))]
    return ", ".join(recipes) or None


def log_path(repo: GitRepo, paths: list[str] | None = None, max_count: int = 20,
             rev: str = "HEAD") -> list[LogEntry]:
    """Per commit that touched a tracked model file: what changed and the recipe, if any.

    Args:
        rev: the commit whose history is listed.
    Raises:
        UnknownRevisionError: ``rev`` names no commit.
    """
    out = repo.git("log", f"--max-count={max_count}", "--format=%H%x00%an%x00%ad%x00%s",
                   "--date=short", repo.resolve(rev), "--",
                   *(paths or ["."])).decode()
    entries = []
    for line in out.splitlines():
        commit, author, date, subject = line.split("\0")
        parents = repo.git("rev-list", "--parents", "-n", "1", commit).decode().split()[1:]
        parent = parents[0] if parents else None
        diffs = diff_revs(repo, parent, commit, paths) if parent else \
            [d for path, m in repo.tracked_manifests(commit, paths).items()
             for d in diff_manifests(repo.store(), path, None, m)]
        if diffs:
            entries.append(LogEntry(commit, author, date, subject, diffs, _recipe_of(repo, commit)))
    return entries
