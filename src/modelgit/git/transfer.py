"""Object remotes: where the tensors of a git remote live, and moving objects to and from them.

The object store of a git remote is, in order:

1. ``git config modelgit.remote.<name>.store URL`` (a path or any fsspec URL, e.g. ``s3://...``);
2. for a remote whose URL is a local path, that repository's own store
   (``<its git dir>/modelgit/store``), so pushing to a local bare repository just works.

Transfers are per object, atomic and idempotent: an interrupted push or fetch resumes by sending
only what the other side still lacks. A remote's store is kept newest whole (the newest version
of each chunk standalone, older ones as deltas on newer ones: :mod:`._layout`), so a clone
fetches the objects of what it checks out and nothing else; a fetch gets a newer version through
the deltas on an older one it has when that is cheaper (:mod:`._thin`; the fetch itself is in
:mod:`._fetch`). Between two local stores, objects stored the same way on both sides are
hard-linked (or reflinked), not copied.

**What is verified.** An object travels as its stored bytes (header and encoded payload, possibly
a delta against a parent object), or, pushed, re-encoded from its verified content. Before it is
written at the destination it is decoded and its content hashed against its id, delta parents
first: a parent that travels too is verified before its children, and a child's content is
decoded from its parent's; a parent that does not travel is decoded from the local store (its
own chain included; for a push whose local copy of it is damaged, from the remote's). An object
that fails is not written, nor are its delta descendants; the message names the object and the
side whose copy is damaged; the rest of the transfer goes on and the command then fails with
the count. The moving itself is in :mod:`._mover`.

* push: the local copy is verified before it is uploaded; a damaged local copy is moved to the
  local store's quarantine and never uploaded. Copies the remote already has are trusted when
  their stored size is the one expected (the local copy's, or the payload length their header
  records); any other is downloaded and verified, and replaced when it is damaged.
  ``verify_remote`` verifies every copy the remote already has (a download of the whole push),
  which also finds damage that keeps the size.
* fetch: the remote's copy is verified (in memory, as downloaded; a linked file as read through
  the link) before it is written to the local store's temporary files and renamed into place;
  nothing is written to the remote. A damaged local copy met while reading (checkout,
  materialize, verify, a delta parent during a fetch) is moved to quarantine, so the next fetch
  replaces it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..errors import CorruptObjectError, ObjectMissingError, StoreError, UsageError
from ..progress import progress_bar
from ..store import Store
from ..store.derived import DERIVED
from ..store.objectfile import ObjectHeader, unpack_header
from ..store.store import decode_object
from ._fetch import HEAD_BYTES, TRANSFER_THREADS, fetch_objects
from ._layout import LayoutSink, plan_layout
from ._mover import (Failures, Item, Mover, Side, TransferResult, content_of, local_damage,
                     stored_size)
from .repo import GitRepo

__all__ = ["remote_store_url", "open_remote_store", "push_objects", "fetch_objects", "fetch_missing",
           "repair_objects", "retry_after_repair", "remotes_for_fetch", "TransferResult"]



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
    return Store.open(remote_store_url(repo, remote), create=True, quarantine=False,
                      newest_whole=True)


# ---------------------------------------------------------------------------- push
def _local_headers(local: Store, oids: set[str], failures: Failures) -> dict[str, ObjectHeader]:
    """Headers of ``oids`` in the local store; objects that are missing or whose header is
    damaged (moved to quarantine) are failures. Their delta ancestors are not needed: the
    remote stores each object standalone or as a delta on a newer one (see :mod:`._layout`)."""
    out: dict[str, ObjectHeader] = {}
    todo = sorted(oids)
    while todo:
        oid = todo.pop()
        if oid in out or oid in failures.messages:
            continue
        try:
            out[oid] = local.header(oid)
            # a derived object travels with its inputs (the remote may lack them), never with
            # the bytes it computes (see modelgit.store.derived)
            todo += local.derived_inputs(oid, out[oid])
        except ObjectMissingError:
            failures.add(oid, f"object {oid} is not in the local store at {local.url}", False)
        except CorruptObjectError as exc:
            failures.add(oid, local_damage(exc, local, "uploaded"), True)
    return dict(sorted(out.items()))


def push_objects(local: Store, remote: Store, oids: set[str], progress: bool | None = None,
                 verify_remote: bool = False, name: str = "remote") -> TransferResult:
    """Upload the objects that ``remote`` lacks, or has damaged, in the remote's layout: the
    newest version of each chunk standalone, older ones as deltas on newer ones (see
    :mod:`._layout`); an object stored the same way here is hard-linked into a local remote.

    Every object is verified before it is uploaded (see the module docstring).

    Args:
        verify_remote: verify every copy the remote already has, not only those whose size
            is not the one expected, and replace the damaged ones.
        name: the remote's name, for messages.
    Raises:
        ObjectMissingError: an object to push is not in the local store either.
        CorruptObjectError: an object is damaged in the local store (moved to quarantine, not
            uploaded). Raised after everything else was uploaded; ``error.result`` has counts.
    """
    failures = Failures()
    me, there = Side.local(local), Side.remote(name, remote)
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool, remote.writing():
        headers = _local_headers(local, set(oids), failures)
        order = sorted(headers)
        remote_sizes = dict(zip(order, pool.map(lambda o: stored_size(there.store, o), order)))
        send = [oid for oid in order if remote_sizes[oid] is None]
        present = [oid for oid in order if remote_sizes[oid] is not None]
        if not verify_remote:  # trusted when it has the size its copy should have
            present = [oid for oid, ok in zip(present, pool.map(
                lambda o: _expected_size(local, there.store, o, remote_sizes[o]), present))
                if not ok]
        damaged = [oid for oid, bad in zip(present, pool.map(
            lambda o: _remote_copy_damaged(local, there.store, o), present)) if bad]
        send += damaged
        if send:
            remote.use_newest_whole()
        if any(headers[oid].encoding is DERIVED for oid in send):
            remote.use_derived()  # before the first is written (see store.derived)
        plan = plan_layout({oid: headers[oid] for oid in send},
                           _remote_predecessors(pool, there.store, headers, send),
                           remote.legacy_heads, set(damaged))
        items = {oid: Item(oid, me, headers[oid]) for oid in send}
        sink = LayoutSink(local, there.store, plan, headers)
        with progress_bar(sum(local.stored_size(o) for o in send), "push objects", progress) as bar:
            mover = Mover(there.store, items, lambda p, v: content_of([local, there.store], p, v),
                           failures, "uploaded", bar, sink)
            mover.run(pool)
    for oid in sorted(mover.dropped()):
        failures.add(oid, f"object {oid} changed in the local store during the push (fetched "
                          "again meanwhile); it was not uploaded: push again", False)
    sent = {oid for oid, _ in mover.sent} - mover.dropped()
    result = TransferResult(len(sent), sink.bytes, len(order) - len(send),
                            len(set(damaged) & sent), linked=sink.linked,
                            reencoded=sink.reencoded)
    failures.raise_for(result, "uploaded", len(set(headers) | set(failures.messages)),
                       "Nothing damaged was uploaded. A damaged local object was moved to the "
                       "store's quarantine: fetch it again from a remote with a good copy "
                       "(`modelgit fetch --remote NAME REV`) or re-add the file that contains it "
                       "(`git add --renormalize PATH`, or `modelgit add`), then push again.")
    return result


def _expected_size(local: Store, remote: Store, oid: str, size: int) -> bool:
    """Whether the remote's copy of ``oid`` has the size it should: the local copy's when it
    was uploaded as it is here, else the size its header's ``plen`` hint says (a truncated or
    extended copy shows; damage that keeps the size needs ``verify_remote``)."""
    if size == local.stored_size(oid):
        return True
    try:
        head = unpack_header(_read_head(remote, oid))
    except (ValueError, OSError, StoreError):
        return False
    plen = head.hint("plen")
    return plen is not None and plen.isdigit() and size == head.payload_offset + int(plen)


def _read_head(store: Store, oid: str) -> bytes:
    read_head = getattr(store.backend, "read_head", None)
    key = Store._key(oid)
    return read_head(key, HEAD_BYTES) if read_head else store.backend.read(key)


def _remote_predecessors(pool, remote: Store, headers: dict[str, ObjectHeader],
                         send: list[str]) -> dict[str, ObjectHeader]:
    """The remote's headers of the local delta parents of uploaded objects that the remote has
    (and that are not uploaded themselves): the objects a push may graft."""
    wanted = sorted({headers[oid].parent for oid in send} - set(send) - {None})

    def head(oid: str):
        try:
            return unpack_header(_read_head(remote, oid))
        except (FileNotFoundError, ValueError, OSError, StoreError):
            return None

    return {oid: h for oid, h in zip(wanted, pool.map(head, wanted)) if h is not None}


def _remote_copy_damaged(local: Store, remote: Store, oid: str) -> bool:
    """Whether the remote's copy of ``oid`` fails to decode to its id (its delta parent's
    content taken from the local store when it has it)."""
    try:
        blob = remote._read(oid)
        parent = unpack_header(blob).parent
        parent_content = content_of([local, remote], parent) if parent else None
        decode_object(oid, blob, parent_content, lambda ref: content_of([local, remote], ref.oid))
    except (ValueError, CorruptObjectError, ObjectMissingError):
        return True
    return False


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
