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
its children, and a child's content is decoded from its parent's; a parent already at the
destination is decoded from there (its own chain included). An object that fails is not
written, nor are its delta descendants; the message names the object and the side whose copy is
damaged; the rest of the transfer goes on and the command then fails with the count.

* push: the local copy is verified before it is uploaded; a damaged local copy is moved to the
  local store's quarantine and never uploaded. Copies the remote already has are trusted when
  their stored size equals the local copy's; any other is downloaded and verified, and replaced
  when it is damaged. ``verify_remote`` verifies every copy the remote already has (a download
  of the whole push), which also finds damage that keeps the size.
* fetch: the remote's copy is verified before it is renamed into the local store (objects held
  in memory, or in the store's temporary files, are invisible until then); nothing is written to
  the remote. A damaged local copy met while reading (checkout, materialize, verify, a delta
  parent during a fetch) is moved to quarantine, so the next fetch replaces it.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

from ..errors import CorruptObjectError, ObjectMissingError, StoreError, UsageError
from ..progress import progress_bar
from ..store import Store
from ..store.objectfile import ObjectHeader, unpack_header
from ..store.store import MAX_DELTA_DEPTH, QUARANTINE, decode_object
from .repo import GitRepo

__all__ = ["remote_store_url", "open_remote_store", "push_objects", "fetch_objects", "fetch_missing",
           "repair_objects", "retry_after_repair", "remotes_for_fetch", "TransferResult"]

TRANSFER_THREADS = 8  # I/O bound: more than the cores
HEAD_BYTES = 4096  # one read gets an object's header (and all of a small object)
_LISTED_FAILURES = 10  # per-object lines in a failed transfer's message


@dataclass
class TransferResult:
    objects: int
    bytes: int
    skipped: int  # already present (and trusted) on the other side
    replaced: int = 0  # damaged copies on the destination that were overwritten (push)
    failed: int = 0  # objects that could not be transferred (the command then fails)


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


# ---------------------------------------------------------------------------- the mover
@dataclass(frozen=True)
class _Side:
    name: str  # "origin", or "local"
    store: Store
    label: str  # how messages name it

    @classmethod
    def remote(cls, name: str, store: Store) -> "_Side":
        # a view that never quarantines: a fetch only reads the remote, and a push overwrites
        # a damaged remote copy in place
        return cls(name, Store(store.backend, quarantine=False), f"remote {name} ({store.url})")

    @classmethod
    def local(cls, store: Store) -> "_Side":
        return cls("local", store, f"the local store at {store.url}")


@dataclass
class _Item:
    """An object to transfer: where it is read from, its header, its bytes if already read."""
    oid: str
    source: _Side
    header: ObjectHeader
    blob: bytes | None = None


class _Failures:
    """Objects that could not be transferred, with a message each (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.messages: dict[str, str] = {}
        self.corrupt = False

    def add(self, oid: str, message: str, corrupt: bool) -> None:
        with self._lock:
            self.messages.setdefault(oid, message)
            self.corrupt = self.corrupt or corrupt

    def __len__(self) -> int:
        return len(self.messages)

    def raise_for(self, result: TransferResult, verb: str, total: int, advice: str,
                  context: str = "") -> None:
        """Raise the error of a transfer that left ``len(self)`` objects out, if any."""
        if not self.messages:
            return
        result.failed = len(self.messages)
        lines = list(self.messages.values())
        shown = lines[:_LISTED_FAILURES]
        if len(lines) > len(shown):
            shown.append(f"... and {len(lines) - len(shown)} more")
        what = f" of {context}" if context else ""
        message = (f"{len(lines)} of {total} objects{what} could not be {verb} ({result.objects} "
                   f"were {verb}):\n  " + "\n  ".join(shown) + f"\n{advice}")
        cls = CorruptObjectError if self.corrupt else ObjectMissingError
        error = cls(message, next(iter(self.messages)))
        error.result = result
        raise error


class _Mover:
    """Copies planned objects to ``dst``, each verified before it is written, delta trees
    parents first (one task per tree, a child decoded from its parent's content, so every
    object is decoded once)."""

    def __init__(self, dst: Store, items: dict[str, _Item],
                 outside_parent: Callable[[str, bool], object],
                 failures: _Failures, verb: str, bar):
        self.dst, self.items, self.failures, self.verb, self.bar = dst, items, failures, verb, bar
        self.outside_parent = outside_parent  # (parent, verify) -> content, at the destination
        self.children: dict[str, list[str]] = {}
        self.roots = []
        for oid, item in sorted(items.items()):
            parent = item.header.parent
            if parent in items:
                self.children.setdefault(parent, []).append(oid)
            else:
                self.roots.append(oid)
        self.sent: list[tuple[str, int]] = []
        self.retry: set[str] = set()  # fetch: roots whose local parent was damaged or missing
        self._lock = threading.Lock()

    def run(self, pool: ThreadPoolExecutor) -> None:
        """Move every tree; the first error that is not a damaged or missing object (a full
        disk, a network failure) is raised once every task has stopped. Objects in a delta
        cycle (damaged parent ids) belong to no tree and fail."""
        futures = [pool.submit(self._tree, root) for root in self.roots]
        error = None
        for future in futures:
            try:
                future.result()
            except Exception as exc:  # the others go on; the first error is raised below
                error = error or exc
                for other in futures:
                    other.cancel()
        wait(futures)
        if error is not None:
            raise error
        done = {oid for oid, _ in self.sent} | set(self.failures.messages) | self.dropped()
        for oid in sorted(set(self.items) - done):
            self.failures.add(oid, f"object {oid} on {self.items[oid].source.label} is corrupt "
                              "(its delta chain is a cycle); it was not " + self.verb, True)

    def dropped(self) -> set[str]:
        """Roots left for a retry, and their descendants (neither sent nor failed)."""
        out, todo = set(), list(self.retry)
        while todo:
            oid = todo.pop()
            out.add(oid)
            todo += self.children.get(oid, ())
        return out

    def _tree(self, root: str) -> None:
        parent = self.items[root].header.parent
        parent_content = None
        if parent is not None:
            # decoded without hashing it: the root's own id check covers its parent's content;
            # only when the root fails is the parent checked, to blame the right object
            parent_content = self._outside_parent(root, parent, verify=False)
            if parent_content is None:
                return
        stack = [(root, parent_content)]
        while stack:
            oid, parent_content = stack.pop()
            item = self.items[oid]
            try:
                blob = item.blob if item.blob is not None else item.source.store._read(oid)
                head = unpack_header(blob)
                if head.parent != item.header.parent:
                    raise ValueError("its header changed during the transfer; run it again")
                try:
                    _, content = decode_object(oid, blob, parent_content)
                except ValueError:
                    if oid != root or parent is None:
                        raise
                    parent_content = self._outside_parent(root, parent, verify=True)
                    if parent_content is None:
                        continue
                    _, content = decode_object(oid, blob, parent_content)
            except ObjectMissingError:
                self._fail_tree(oid, f"object {oid} vanished from {item.source.label} during the "
                                     f"transfer; it was not {self.verb}", corrupt=False)
                continue
            except ValueError as exc:
                self._fail_tree(oid, self._damaged(item, str(exc), blob), corrupt=True)
                continue
            self._write(oid, blob)
            stack += [(child, content) for child in self.children.get(oid, ())]

    def _outside_parent(self, root: str, parent: str, verify: bool):
        """The content of ``root``'s delta parent, which does not travel; None (the tree is
        failed, or left for a retry) when it cannot be had."""
        try:
            return self.outside_parent(parent, verify)
        except _Retry:
            with self._lock:
                self.retry.add(root)
        except (CorruptObjectError, ObjectMissingError) as exc:
            self._fail_tree(root, f"object {root} was not {self.verb}: its delta parent "
                                  f"{parent} could not be read ({exc})", corrupt=True)
        return None

    def _damaged(self, item: _Item, why: str, blob) -> str:
        if item.source.name == "local":  # moved aside, so that a fetch or add can replace it
            store = item.source.store
            return _local_damage(store._corrupt(item.oid, why, blob), store, self.verb)
        return f"object {item.oid} on {item.source.label} is corrupt ({why}); it was not {self.verb}"

    def _fail_tree(self, oid: str, message: str, corrupt: bool) -> None:
        self.failures.add(oid, message, corrupt)
        todo = list(self.children.get(oid, ()))
        while todo:
            child = todo.pop()
            self.failures.add(child, f"object {child} was not {self.verb}: its delta parent "
                                     f"{self.items[child].header.parent} failed", corrupt)
            todo += self.children.get(child, ())

    def _write(self, oid: str, blob) -> None:
        stage = getattr(self.dst.backend, "stage", None)
        if stage is not None:  # durable in batches (writeback started early, fdatasync at commit)
            stage(Store._key(oid), blob)
        else:
            self.dst.backend.write_atomic(Store._key(oid), blob)
        with self._lock:
            self.sent.append((oid, len(blob)))
            self.bar.update(len(blob))


def _local_damage(error: CorruptObjectError, store: Store, verb: str) -> str:
    """One line for an object found damaged in the local store during a transfer."""
    where = (f"moved to {QUARANTINE}/{error.oid}" if error.quarantined
             else f"delete {Store._key(error.oid)} there")
    return (f"object {error.oid} is corrupt in the local store at {store.url} ({error.reason}): "
            f"not {verb}, {where}")


class _Retry(Exception):
    """A fetch's delta root needs a parent that the local store turned out not to have whole."""


def _stored_size(store: Store, oid: str) -> int | None:
    try:
        return store.stored_size(oid)
    except FileNotFoundError:
        return None


def _content(stores: list[Store], oid: str, verify: bool = True):
    """The content of ``oid`` (``verify``: checked against its id) from the first of ``stores``
    that gives it."""
    error = None
    for store in stores:
        try:
            return store._load(oid, verify=verify)[1]
        except (CorruptObjectError, ObjectMissingError) as exc:
            error = error or exc
    raise error


# ---------------------------------------------------------------------------- push
def _local_closure(local: Store, oids: set[str], failures: _Failures) -> dict[str, ObjectHeader]:
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
            failures.add(oid, _local_damage(exc, local, "uploaded"), True)
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
    failures = _Failures()
    me, there = _Side.local(local), _Side.remote(name, remote)
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool, remote.writing():
        headers = _local_closure(local, set(oids), failures)
        order = sorted(headers)
        remote_sizes = dict(zip(order, pool.map(lambda o: _stored_size(there.store, o), order)))
        send = [oid for oid in order if remote_sizes[oid] is None]
        present = [oid for oid in order if remote_sizes[oid] is not None]
        if not verify_remote:  # trusted when it has the local copy's size (same bytes, mostly)
            present = [oid for oid in present if remote_sizes[oid] != local.stored_size(oid)]
        damaged = [oid for oid, bad in zip(present, pool.map(
            lambda o: _remote_copy_damaged(local, there.store, o), present)) if bad]
        send += damaged
        items = {oid: _Item(oid, me, headers[oid]) for oid in send}
        with progress_bar(sum(local.stored_size(o) for o in send), "push objects", progress) as bar:
            mover = _Mover(there.store, items, lambda p, v: _content([local, there.store], p, v),
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
        parent_content = _content([local, remote], parent) if parent else None
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
    sides = [_Side.remote(name, store) for name, store in remotes]
    failures = _Failures()
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
            mover = _Mover(local, items, lambda p, v: _local_parent(local, p, v), failures,
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


def _fetch_advice(failures: _Failures) -> str:
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
    """The content of a fetched root's delta parent, from the local store; _Retry when it is
    damaged (then moved to quarantine) or its chain is incomplete: it is fetched next pass."""
    try:
        return local._load(parent, verify=verify)[1]
    except CorruptObjectError as exc:
        if exc.quarantined:
            raise _Retry() from None
        raise
    except ObjectMissingError:
        raise _Retry() from None


def _plan_fetch(pool, local: Store, sides: list[_Side], missing: set[str], failures: _Failures,
                context: str) -> dict[str, _Item]:
    """Find each missing object and the delta ancestors it needs on the remotes (a header read
    each), rounds going from children to parents until every chain reaches the local store."""
    items: dict[str, _Item] = {}
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


def _locate(sides: list[_Side], oid: str, context: str) -> tuple[_Item | None, tuple[str, bool] | None]:
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
        return _Item(oid, side, header, whole), None
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
