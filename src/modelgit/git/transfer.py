"""Object remotes: where the tensors of a git remote live, and moving objects to and from them.

The object store of a git remote is, in order:

1. ``git config modelgit.remote.<name>.store URL`` (a path or any fsspec URL, e.g. ``s3://...``);
2. for a remote whose URL is a local path, that repository's own store
   (``<its git dir>/modelgit/store``), so pushing to a local bare repository just works.

Transfers are per object, atomic and idempotent: an interrupted push or fetch resumes by sending
only what the other side still lacks. Fetched objects are verified (decoded and hashed) before
use, delta parents included.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from ..errors import CorruptObjectError, ObjectMissingError, UsageError
from ..progress import progress_bar
from ..store import Store
from .repo import GitRepo

__all__ = ["remote_store_url", "open_remote_store", "push_objects", "fetch_objects", "fetch_missing",
           "TransferResult"]

TRANSFER_THREADS = 8  # I/O bound: more than the cores


@dataclass
class TransferResult:
    objects: int
    bytes: int
    skipped: int  # already present on the other side


def _local_git_dir(url: str) -> str | None:
    path = url[len("file://"):] if url.startswith("file://") else url
    if "://" in path or (":" in path.split("/")[0] and not os.path.exists(path)):
        return None  # ssh/http remote, or scp-like host:path
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(os.path.join(path, ".git")):
        return os.path.join(path, ".git")
    if os.path.isfile(os.path.join(path, "HEAD")):
        return path
    return None


def remote_store_url(repo: GitRepo, remote: str) -> str:
    """The object store URL of git remote ``remote`` (see the module docstring).

    Raises:
        UsageError: the remote does not exist or has no object store configured.
    """
    configured = repo.config_get(f"modelgit.remote.{remote}.store")
    if configured:
        return configured
    url = repo.config_get(f"remote.{remote}.url")
    if url is None:
        if _local_git_dir(remote):  # a path given instead of a remote name
            url = remote
        else:
            raise UsageError(f"no git remote named {remote!r}; `git remote -v` lists them")
    git_dir = _local_git_dir(url)
    if git_dir is None:
        raise UsageError(
            f"git remote {remote!r} ({url}) is not a local repository, so modelgit cannot guess "
            f"where its tensors live; set it with `git config modelgit.remote.{remote}.store "
            "s3://bucket/prefix` (any path or fsspec URL)")
    return os.path.join(git_dir, "modelgit", "store")


def open_remote_store(repo: GitRepo, remote: str) -> Store:
    return Store.open(remote_store_url(repo, remote), create=True)


def _copy(src: Store, dst: Store, oid: str) -> int:
    blob = src._read(oid)
    stage = getattr(dst.backend, "stage", None)
    if stage is not None:  # durable in batches (writeback started early, fdatasync at commit)
        stage(Store._key(oid), blob)
    else:
        dst.backend.write_atomic(Store._key(oid), blob)
    return len(blob)


def _commit(store: Store) -> None:
    commit = getattr(store.backend, "commit_staged", None)
    if commit is not None:
        commit()
    store.backend.sync_dirs()


def _with_parents(store: Store, oids: set[str]) -> set[str]:
    """``oids`` and the delta ancestors of each (present in ``store``)."""
    out, todo = set(), list(oids)
    while todo:
        oid = todo.pop()
        if oid in out:
            continue
        out.add(oid)
        parent = store.header(oid).parent
        if parent:
            todo.append(parent)
    return out


def push_objects(local: Store, remote: Store, oids: set[str], progress: bool | None = None
                 ) -> TransferResult:
    """Upload the objects (and their delta ancestors) that ``remote`` lacks.

    Raises:
        ObjectMissingError: an object to push is not in the local store either.
    """
    wanted = _with_parents(local, oids)
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        present = dict(zip(wanted, pool.map(remote.has, wanted)))
        missing = sorted(oid for oid, has in present.items() if not has)
        with progress_bar(sum(local.stored_size(o) for o in missing), "push objects", progress) as bar:
            sizes = _copy_all(pool, local, remote, missing, bar)
    return TransferResult(len(missing), sum(sizes), len(wanted) - len(missing))


def _copy_all(pool: ThreadPoolExecutor, src: Store, dst: Store, oids: list[str], bar,
              copy=None) -> list[int]:
    """Copy ``oids`` on ``pool``; whatever was copied is committed, even when a copy failed
    (an interrupted transfer resumes from there), and only then is the first error raised.

    Waiting for every copy before the commit matters: a copy still in flight when another
    fails would otherwise be staged after the commit and lost.
    """
    copy = copy or (lambda oid: _copy(src, dst, oid))
    futures = [pool.submit(copy, oid) for oid in oids]
    sizes, error = [], None
    try:
        for future in futures:
            try:
                sizes.append(future.result())
                bar.update(sizes[-1])
            except Exception as exc:  # the others go on; the first error is raised below
                error = error or exc
                for other in futures:
                    other.cancel()
    finally:
        wait(futures)
        _commit(dst)
    if error is not None:
        raise error
    return sizes


def fetch_objects(local: Store, remotes: list[tuple[str, Store]], oids: set[str],
                  progress: bool | None = None, context: str = "") -> TransferResult:
    """Download the objects ``local`` lacks (with delta ancestors), verifying each.

    Args:
        remotes: (name, store) pairs tried in order.
        context: what needs the objects (a path), for error messages.

    Raises:
        ObjectMissingError: no remote has an object; names the object, the path and the remotes.
        CorruptObjectError: a downloaded object does not decode to its id (it is not kept).
    """
    fetched, total, skipped = [], 0, 0
    todo = {oid for oid in oids if not local.has(oid)}
    skipped = len(oids) - len(todo)
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool, \
            progress_bar(0, "fetch objects", progress) as bar:
        while todo:
            batch = sorted(todo)
            todo = set()
            sizes = _copy_all(pool, None, local, batch, bar,
                              copy=lambda o: _fetch_one(local, remotes, o, context))
            fetched += batch
            total += sum(sizes)
            for oid in batch:
                parent = local.header(oid).parent
                if parent and not local.has(parent):
                    todo.add(parent)
        # verify in parallel once every ancestor is present, one delta tree per task
        children: dict[str, list[str]] = {}
        trees = _roots(local, fetched, children)
        for found in pool.map(lambda root: _verify_tree(local, root, children), trees):
            if found:
                oid, problem = found
                local.backend.delete(Store._key(oid))
                raise CorruptObjectError(f"object {oid} fetched for {context or 'checkout'} is "
                                         f"corrupt on the remote ({problem}); it was not kept")
    return TransferResult(len(fetched), total, skipped)


def fetch_missing(repo: GitRepo, store: Store, oids, context: str,
                  progress: bool | None = False) -> TransferResult | None:
    """Fetch the objects of ``oids`` that ``store`` lacks from the repository's object remotes;
    None (and no remote opened) when it has them all. Errors as :func:`fetch_objects`."""
    missing = {oid for oid in oids if not store.has(oid)}
    if not missing:
        return None
    return fetch_objects(store, remotes_for_fetch(repo), missing, progress=progress, context=context)


def _roots(store: Store, fetched: list[str], children: dict[str, list[str]]) -> list[str]:
    """The fetched objects whose delta parent was not fetched with them; fills ``children``."""
    wanted, out = set(fetched), []
    for oid in fetched:
        parent = store.header(oid).parent
        if parent in wanted:
            children.setdefault(parent, []).append(oid)
        else:
            out.append(oid)
    return out


def _verify_tree(store: Store, root: str, children: dict[str, list[str]]) -> tuple[str, str] | None:
    """Verify ``root`` and its fetched delta descendants, parents first, each decoded once
    (a child is decoded from its parent's content); (object, problem) of the first bad one."""
    todo = [(root, None)]
    while todo:
        oid, known = todo.pop()
        try:
            content = store.get_buffer(oid, known=known)
        except (CorruptObjectError, ObjectMissingError) as exc:
            return oid, str(exc)
        todo += [(child, {oid: content}) for child in children.get(oid, ())]
    return None


def _fetch_one(local: Store, remotes: list[tuple[str, Store]], oid: str, context: str) -> int:
    for _name, remote in remotes:
        if remote.has(oid):
            return _copy(remote, local, oid)
    names = ", ".join(f"{name} ({remote.url})" for name, remote in remotes) or "(no remotes)"
    raise ObjectMissingError(
        f"object {oid}{' of ' + context if context else ''} is in neither the local store nor "
        f"any object remote: {names}. Push it from a clone that has it (`git push` uploads "
        "objects), or point `git config modelgit.remote.<name>.store` at the store holding it")


def remotes_for_fetch(repo: GitRepo, preferred: str | None = None) -> list[tuple[str, Store]]:
    """Object stores of the repository's remotes, ``preferred`` (or origin) first."""
    names = repo.git("remote").decode().split()
    first = preferred or repo.config_get("modelgit.fetchremote", "origin")
    ordered = ([first] if first in names or preferred else []) + [n for n in names if n != first]
    out = []
    for name in ordered:
        try:
            out.append((name, open_remote_store(repo, name)))
        except UsageError:
            continue
    return out
