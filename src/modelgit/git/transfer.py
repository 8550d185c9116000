"""Object remotes: where the tensors of a git remote live, and moving objects to and from them.

The object store of a git remote is, in order:

1. ``git config modelgit.remote.<name>.store URL`` (a path or any fsspec URL, e.g. ``s3://...``);
2. for a remote whose URL is a local path, that repository's own store
   (``<its git dir>/modelgit/store``), so pushing to a local bare repository just works.

Transfers are per object, atomic and idempotent: an interrupted push or fetch resumes by sending
only what the other side still lacks.

**What is verified.** An object travels as its stored bytes (header and encoded payload, possibly
a delta against a parent object). Before it is written at the destination it is decoded and its
content hashed against its id, delta parents first: a parent that travels too is verified before
its children, and a child's content is decoded from its parent's; a parent that does not travel
is decoded from the local store (its own chain included; for a push whose local copy of it is
damaged, from the remote's). An object that fails is not written, nor are its delta
descendants; the message names the object and the side whose copy is damaged; the rest of the
transfer goes on and the command then fails with the count. The moving itself is in
:mod:`._mover`.

* push: the local copy is verified before it is uploaded; a damaged local copy is moved to the
  local store's quarantine and never uploaded. Copies the remote already has are trusted when
  their stored size equals the local copy's; any other is downloaded and verified, and replaced
  when it is damaged. ``verify_remote`` verifies every copy the remote already has (a download
  of the whole push), which also finds damage that keeps the size.
* fetch: the remote's copy is verified (in memory, as downloaded) before it is written to the
  local store's temporary files and renamed into place; nothing is written to the remote. A damaged local copy met while reading (checkout, materialize, verify, a delta
  parent during a fetch) is moved to quarantine, so the next fetch replaces it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..errors import CorruptObjectError, ObjectMissingError, StoreError, UsageError
from ..progress import progress_bar
from ..store import Store
from ..store.objectfile import ObjectHeader, unpack_header
from ..store.store import MAX_DELTA_DEPTH, decode_object
from ._mover import (Failures, Item, Mover, Retry, Side, TransferResult, content_of, local_damage,
                     stored_size)
from .repo import GitRepo

__all__ = ["remote_store_url", "open_remote_store", "push_objects", "fetch_objects", "fetch_missing",
           "repair_objects", "retry_after_repair", "remotes_for_fetch", "TransferResult"]

TRANSFER_THREADS = 8  # I/O bound: more than the cores
HEAD_BYTES = 4096  # one read gets an object's header (and all of a small object)


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
    """The object store of git remote ``remote``; reading it never moves anything aside."""
    return Store.open(remote_store_url(repo, remote), create=True, quarantine=False)


# ---------------------------------------------------------------------------- push
def _local_closure(local: Store, oids: set[str], failures: Failures) -> dict[str, ObjectHeader]:
    """Headers of ``oids`` and of their delta ancestors in the local store; objects that are
    missing or whose header is damaged (moved to quarantine) are failures."""
    out: dict[str, ObjectHeader] = {}
    todo, seen = list(oids), set()
    while todo:
        oid = todo.pop()
        if oid in seen:
            continue
        seen.add(oid)
        try:
            out[oid] = local.header(oid)
        except ObjectMissingError:
            failures.add(oid, f"object {oid} is not in the local store at {local.url}", False)
            continue
        except CorruptObjectError as exc:
            failures.add(oid, local_damage(exc, local, "uploaded"), True)
            continue
        if out[oid].parent:
            todo.append(out[oid].parent)
    return out


def push_objects(local: Store, remote: Store, oids: set[str], progress: bool | None = None,
                 verify_remote: bool = False, name: str = "remote") -> TransferResult:
    """Upload the objects (and their delta ancestors) that ``remote`` lacks, or has damaged.

    Every object is verified before it is uploaded (see the module docstring).

    Args:
        verify_remote: verify every copy the remote already has, not only those whose size
            differs from the local copy's, and replace the damaged ones.
        name: the remote's name, for messages.
    Raises:
        ObjectMissingError: an object to push is not in the local store either.
        CorruptObjectError: an object is damaged in the local store (moved to quarantine, not
            uploaded). Raised after everything else was uploaded; ``error.result`` has counts.
    """
    failures = Failures()
    me, there = Side.local(local), Side.remote(name, remote)
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool, remote.writing():
        headers = _local_closure(local, set(oids), failures)
        order = sorted(headers)
        remote_sizes = dict(zip(order, pool.map(lambda o: stored_size(there.store, o), order)))
        send = [oid for oid in order if remote_sizes[oid] is None]
        present = [oid for oid in order if remote_sizes[oid] is not None]
        if not verify_remote:  # trusted when it has the local copy's size (same bytes, mostly)
            present = [oid for oid in present if remote_sizes[oid] != local.stored_size(oid)]
        damaged = [oid for oid, bad in zip(present, pool.map(
            lambda o: _remote_copy_damaged(local, there.store, o), present)) if bad]
        send += damaged
        items = {oid: Item(oid, me, headers[oid]) for oid in send}
        with progress_bar(sum(local.stored_size(o) for o in send), "push objects", progress) as bar:
            mover = Mover(there.store, items, lambda p, v: content_of([local, there.store], p, v),
                           failures, "uploaded", bar)
            mover.run(pool)
    sent = dict(mover.sent)
    result = TransferResult(len(sent), sum(sent.values()), len(order) - len(send),
                            len(set(damaged) & set(sent)))
    failures.raise_for(result, "uploaded", len(set(headers) | set(failures.messages)),
                       "Nothing damaged was uploaded. A damaged local object was moved to the "
                       "store's quarantine: fetch it again from a remote with a good copy "
                       "(`modelgit fetch --remote NAME REV`) or re-add the file that contains it "
                       "(`git add --renormalize PATH`, or `modelgit add`), then push again.")
    return result


def _remote_copy_damaged(local: Store, remote: Store, oid: str) -> bool:
    """Whether the remote's copy of ``oid`` fails to decode to its id (its delta parent's
    content taken from the local store when it has it)."""
    try:
        blob = remote._read(oid)
        parent = unpack_header(blob).parent
        parent_content = content_of([local, remote], parent) if parent else None
        decode_object(oid, blob, parent_content)
    except (ValueError, CorruptObjectError, ObjectMissingError):
        return True
    return False


# ---------------------------------------------------------------------------- fetch
def fetch_objects(local: Store, remotes: list[tuple[str, Store]], oids: set[str],
                  progress: bool | None = None, context: str = "") -> TransferResult:
    """Download the objects ``local`` lacks (with delta ancestors), each verified before it is
    written (see the module docstring).

    Objects already here whose delta ancestors are not are completed too.

    Args:
        remotes: (name, store) pairs; each object comes from the first that has it.
        context: what needs the objects (a path), for error messages.

    Raises:
        ObjectMissingError: no remote has an object; names the object, the path and the remotes.
        CorruptObjectError: a remote's copy of an object does not decode to its id (it is not
            kept). Both are raised once everything else was fetched; ``error.result`` has counts.
    """
    sides = [Side.remote(name, store) for name, store in remotes]
    failures = Failures()
    sent: dict[str, int] = {}
    wanted = set(oids)
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool, local.writing(), \
            progress_bar(0, "fetch objects", progress) as bar:
        missing = {oid for oid in wanted if not local.has(oid)}
        skipped = len(wanted) - len(missing)
        for oid in sorted(wanted - missing):
            missing |= _missing_ancestors(local, oid)
        retry: set[str] = set()
        for _attempt in range(MAX_DELTA_DEPTH + 2):  # a pass per damaged local parent found
            items = _plan_fetch(pool, local, sides, missing, failures, context)
            mover = Mover(local, items, lambda p, v: _local_parent(local, p, v), failures,
                           "fetched", bar)
            mover.run(pool)
            local.flush()  # what was fetched is visible to the next pass
            sent.update(mover.sent)
            if not mover.retry or mover.retry == retry:  # done, or no progress
                break
            retry = mover.retry
            missing = mover.dropped()  # planned again: now from the damaged parent down
        for oid in sorted(mover.dropped()):
            failures.add(oid, f"object {oid} was not fetched: a delta ancestor of it is damaged "
                              f"or missing in the local store at {local.url} and could not be "
                              "fetched again", True)
    result = TransferResult(len(sent), sum(sent.values()), skipped)
    failures.raise_for(result, "fetched", len(sent) + len(failures), _fetch_advice(failures),
                       context)
    return result


def _fetch_advice(failures: Failures) -> str:
    advice = "What was fetched is kept; run the command again once the remote is repaired."
    if failures.corrupt:
        advice += (" To repair a remote, push from a clone that has good copies with "
                   "`modelgit push --verify-remote REMOTE` (it replaces damaged ones), or fetch "
                   "from another remote with `modelgit fetch --remote NAME`.")
    else:
        advice += (" Push the objects from a clone that has them (`git push` uploads objects), or "
                   "point `git config modelgit.remote.<name>.store` at the store holding them.")
    return advice


def _missing_ancestors(local: Store, oid: str) -> set[str]:
    """Delta ancestors of ``oid`` (present) that the local store lacks; a damaged header met
    on the way is moved to quarantine and counts as missing."""
    out, depth = set(), 0
    while depth <= MAX_DELTA_DEPTH:
        try:
            parent = local.header(oid).parent
        except CorruptObjectError:
            out.add(oid)
            return out
        except ObjectMissingError:
            return out
        if not parent:
            return out
        if not local.has(parent):
            out.add(parent)
            return out
        oid, depth = parent, depth + 1
    return out


def _local_parent(local: Store, parent: str, verify: bool):
    """The content of a fetched root's delta parent, from the local store; Retry when it is
    damaged (then moved to quarantine) or its chain is incomplete: it is fetched next pass."""
    try:
        return local._load(parent, verify=verify)[1]
    except CorruptObjectError as exc:
        if exc.quarantined:
            raise Retry() from None
        raise
    except ObjectMissingError:
        raise Retry() from None


def _plan_fetch(pool, local: Store, sides: list[Side], missing: set[str], failures: Failures,
                context: str) -> dict[str, Item]:
    """Find each missing object and the delta ancestors it needs on the remotes (a header read
    each), rounds going from children to parents until every chain reaches the local store."""
    items: dict[str, Item] = {}
    todo = sorted(missing)
    while todo:
        found = list(pool.map(lambda o: _locate(sides, o, context), todo))
        following: set[str] = set()
        for oid, (item, problem) in zip(todo, found):
            if item is None:
                failures.add(oid, problem[0], problem[1])
                continue
            items[oid] = item
            parent = item.header.parent
            if parent and parent not in items:
                if local.has(parent):
                    following |= _missing_ancestors(local, parent)
                else:
                    following.add(parent)
        todo = sorted(following - set(items) - set(failures.messages))
    failed = True
    while failed:  # a delta whose parent is on no remote (or damaged there) cannot be verified
        failed = False
        for oid, item in sorted(items.items()):
            parent = item.header.parent
            if parent in failures.messages:
                failures.add(oid, f"object {oid} was not fetched: its delta parent {parent} "
                                  "could not be fetched", failures.corrupt)
                del items[oid]
                failed = True
    return items


def _locate(sides: list[Side], oid: str, context: str) -> tuple[Item | None, tuple[str, bool] | None]:
    """(item, None) from the first remote with a readable header for ``oid``, else
    (None, (message, corrupt))."""
    damaged = []
    for side in sides:
        key = Store._key(oid)
        read_head = getattr(side.store.backend, "read_head", None)
        try:
            head = read_head(key, HEAD_BYTES) if read_head else side.store.backend.read(key)
            try:
                header = unpack_header(head)
            except ValueError:
                if len(head) < HEAD_BYTES:
                    raise
                head = side.store.backend.read(key)  # a header longer than HEAD_BYTES
                header = unpack_header(head)
        except FileNotFoundError:
            continue
        except ValueError as exc:
            damaged.append(f"object {oid} on {side.label} is corrupt ({exc}); it was not fetched")
            continue
        whole = head if len(head) < HEAD_BYTES or not read_head else None
        return Item(oid, side, header, whole), None
    if damaged:
        return None, ("; ".join(damaged), True)
    names = ", ".join(side.label for side in sides) or "(no remotes)"
    return None, (f"object {oid}{' of ' + context if context else ''} is in neither the local store "
                  f"nor any object remote: {names}", False)


def fetch_missing(repo: GitRepo, store: Store, oids, context: str,
                  progress: bool | None = False) -> TransferResult | None:
    """Fetch the objects of ``oids`` that ``store`` lacks from the repository's object remotes;
    None (and no remote opened) when it has them all. Errors as :func:`fetch_objects`."""
    missing = {oid for oid in oids if not store.has(oid)}
    if not missing:
        return None
    return fetch_objects(store, remotes_for_fetch(repo), missing, progress=progress, context=context)


# ---------------------------------------------------------------------------- repair
def repair_objects(repo: GitRepo, store: Store, oids, context: str,
                   progress: bool | None = False) -> TransferResult | None:
    """Check ``oids`` in the local store (decoding each: damaged ones are moved to quarantine,
    missing delta ancestors found) and fetch what that leaves missing from the object remotes.

    Returns None when every object was whole. Errors as :func:`fetch_objects`.
    """
    def check(oid: str) -> set[str]:
        try:
            store.get_buffer(oid)
        except CorruptObjectError as exc:
            if not exc.quarantined:
                raise
            return {oid, exc.oid}
        except ObjectMissingError as exc:
            return {oid, exc.oid}
        return set()

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        bad = set().union(*pool.map(check, sorted(set(oids))))
    bad.discard(None)
    if not bad:
        return None
    return fetch_objects(store, remotes_for_fetch(repo), bad, progress=progress, context=context)


def retry_after_repair(repo: GitRepo, store: Store, oids, context: str, action: Callable[[], object],
                       notify: Callable[[str], None] | None = None):
    """Run ``action`` (which reads ``oids`` from ``store``); when it meets a damaged local
    object (moved to quarantine) or a missing one, fetch them again and run it once more.

    Raises:
        The error of ``action`` when nothing could be fetched, else that of the fetch, which
        says what was damaged.
    """
    try:
        return action()
    except (CorruptObjectError, ObjectMissingError) as exc:
        if isinstance(exc, CorruptObjectError) and not exc.quarantined:
            raise
        first = exc
    try:
        fetched = repair_objects(repo, store, oids, context)
    except StoreError as exc:
        message = f"{first}\nFetching it again failed: {exc}"
        if isinstance(exc, (CorruptObjectError, ObjectMissingError)):
            raise type(exc)(message, exc.oid) from exc
        raise type(exc)(message) from exc
    if fetched is None or not fetched.objects:
        raise first
    if notify is not None:
        notify(f"{context}: {fetched.objects} damaged or missing objects were fetched again "
               f"(the damaged local copies are in the store's quarantine)")
    return action()


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
