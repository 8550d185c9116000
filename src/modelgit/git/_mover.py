"""Moving objects between two stores, each verified before it is written (see
:mod:`modelgit.git.transfer`, which plans what moves: push and fetch).

Objects move per delta tree, parents first, one task per tree: a child is decoded from its
parent's content, so every object is decoded once; an object that fails is not written, nor are
its descendants, and the failures are collected to be reported together at the end.

What is written for a verified object is the sink's choice: a fetch writes the object as it
came (:class:`CopySink`: hard-linked from a local remote's file when it can), a push writes the
remote's layout (:class:`~modelgit.git._layout.LayoutSink`). A linked file is linked before it is
read and verified, and published only once verified, so the bytes checked are the bytes kept.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

from ..errors import CorruptObjectError, ObjectMissingError
from ..store import Store
from ..dtypes import DTYPES, FLOAT_DTYPES
from ..store.encodings import DELTA16, encode_standalone
from ..store.objectfile import ObjectHeader, pack_header, unpack_header
from ..store.derived import DERIVED
from ..store.store import MAX_DELTA_DEPTH, QUARANTINE, decode_object

__all__ = ["TransferResult", "Side", "Item", "Failures", "Mover", "Retry", "local_damage",
           "content_of", "stored_size", "CopySink", "links_allowed", "chain_depth"]

_LISTED_FAILURES = 10  # per-object lines in a failed transfer's message


@dataclass
class TransferResult:
    objects: int
    bytes: int
    skipped: int  # already present (and trusted) on the other side
    replaced: int = 0  # damaged copies on the destination that were overwritten (push)
    failed: int = 0  # objects that could not be transferred (the command then fails)
    linked: int = 0  # of ``objects``, how many were hard-linked (or reflinked), not copied
    reencoded: int = 0  # push: objects the remote had, re-encoded as deltas on newer ones


@dataclass(frozen=True)
class Side:
    name: str  # "origin", or "local"
    store: Store
    label: str  # how messages name it

    @classmethod
    def remote(cls, name: str, store: Store) -> "Side":
        # a view that never quarantines: a fetch only reads the remote, and a push overwrites
        # a damaged remote copy in place
        return cls(name, Store(store.backend, quarantine=False, config=store.config),
                   f"remote {name} ({store.url})")

    @classmethod
    def local(cls, store: Store) -> "Side":
        return cls("local", store, f"the local store at {store.url}")


@dataclass
class Item:
    """An object to transfer: where it is read from, its header, its bytes if already read
    (``blob``: all of them; ``head``: the first ones, read to locate it)."""
    oid: str
    source: Side
    header: ObjectHeader
    blob: bytes | None = None
    head: bytes | None = None

    def read(self) -> bytes:
        """All the bytes of the source's copy: ``blob``, else the rest after ``head`` (one
        ranged read: what was read to locate the object is not read again), else all of it.
        Verified by the caller like any copy, so two reads never yield an unchecked object.

        Raises:
            ObjectMissingError: the object vanished from the source.
        """
        if self.blob is not None:
            return self.blob
        store = self.source.store
        read_from = getattr(store.backend, "read_from", None)
        if not self.head or read_from is None:
            return store._read(self.oid)
        try:
            return self.head + read_from(Store._key(self.oid), len(self.head))
        except FileNotFoundError:
            return store._read(self.oid)  # raises the missing object's error


class Failures:
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


class Mover:
    """Copies planned objects to ``dst``, each verified before it is written, delta trees
    parents first (one task per tree, a child decoded from its parent's content, so every
    object is decoded once)."""

    def __init__(self, dst: Store, items: dict[str, Item],
                 outside_parent: Callable[[str, bool], object],
                 failures: Failures, verb: str, bar, sink=None):
        self.dst, self.items, self.failures, self.verb, self.bar = dst, items, failures, verb, bar
        self.sink = sink if sink is not None else CopySink(dst)
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
        # derived objects last: their inputs, moved first, are then read at the destination
        # rather than downloaded a second time to verify them
        stored = [r for r in self.roots if self.items[r].header.encoding is not DERIVED]
        derived = [r for r in self.roots if self.items[r].header.encoding is DERIVED]
        self._run_trees(pool, stored)
        if derived:
            self.sink.visible()
            self._run_trees(pool, derived)
        done = {oid for oid, _ in self.sent} | set(self.failures.messages) | self.dropped()
        for oid in sorted(set(self.items) - done):
            self.failures.add(oid, f"object {oid} on {self.items[oid].source.label} is corrupt "
                              "(its delta chain is a cycle); it was not " + self.verb, True)

    def _run_trees(self, pool: ThreadPoolExecutor, roots: list[str]) -> None:
        futures = [pool.submit(self._tree, root) for root in roots]
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
        tree = self.sink.tree(root)
        try:
            self._walk(root, parent, parent_content, tree)
        except BaseException:
            tree.abort()  # nothing of a tree cut short is published: a delta could lack its parent
            raise
        tree.done()

    def _walk(self, root: str, parent: str | None, parent_content, tree) -> None:
        stack = [(root, parent_content)]
        while stack:
            oid, parent_content = stack.pop()
            item = self.items[oid]
            handle = blob = None
            try:
                blob, handle = tree.read(item)
                head = unpack_header(blob)
                if head.parent != item.header.parent:
                    # re-encoded meanwhile (a push keeps its remote newest whole): planned again
                    tree.discard(handle)
                    with self._lock:
                        self.retry.add(oid)
                    tree.failed(oid, parent_content)
                    continue
                inputs = self._inputs(item)
                try:
                    _, content = decode_object(oid, blob, parent_content, inputs)
                except ValueError:
                    if oid != root or parent is None:
                        raise
                    parent_content = self._outside_parent(root, parent, verify=True)
                    if parent_content is None:
                        tree.discard(handle)
                        continue
                    _, content = decode_object(oid, blob, parent_content, inputs)
            except ObjectMissingError as exc:
                tree.discard(handle)
                if exc.oid not in (oid, None):  # an input of a derived object
                    self._fail_tree(oid, f"derived object {oid} was not {self.verb}: its input "
                                         f"{exc.oid} is on neither side ({exc})", corrupt=False)
                    tree.failed(oid, parent_content)
                    continue
                self._fail_tree(oid, f"object {oid} vanished from {item.source.label} during the "
                                     f"transfer; it was not {self.verb}", corrupt=False)
                tree.failed(oid, parent_content)
                continue
            except ValueError as exc:
                tree.discard(handle)
                self._fail_tree(oid, self._damaged(item, str(exc), blob), corrupt=True)
                tree.failed(oid, parent_content)
                continue
            tree.accept(item, blob, handle, content, parent_content)
            with self._lock:
                self.sent.append((oid, len(blob)))
                self.bar.update(len(blob))
            stack += [(child, content) for child in self.children.get(oid, ())]

    def _inputs(self, item: Item):
        """How a derived object in transit reads its inputs: verified, from the destination
        when it has them, else from the source (see :mod:`modelgit.store.derived`)."""
        stores = [self.dst, item.source.store]
        return lambda ref: content_of(stores, ref.oid)

    def _outside_parent(self, root: str, parent: str, verify: bool):
        """The content of ``root``'s delta parent, which does not travel; None (the tree is
        failed, or left for a retry) when it cannot be had."""
        try:
            return self.outside_parent(parent, verify)
        except Retry:
            with self._lock:
                self.retry.add(root)
        except (CorruptObjectError, ObjectMissingError) as exc:
            self._fail_tree(root, f"object {root} was not {self.verb}: its delta parent "
                                  f"{parent} could not be read ({exc})", corrupt=True)
        return None

    def _damaged(self, item: Item, why: str, blob) -> str:
        if item.source.name == "local":  # moved aside, so that a fetch or add can replace it
            store = item.source.store
            return local_damage(store._corrupt(item.oid, why, blob), store, self.verb)
        return f"object {item.oid} on {item.source.label} is corrupt ({why}); it was not {self.verb}"

    def _fail_tree(self, oid: str, message: str, corrupt: bool) -> None:
        self.failures.add(oid, message, corrupt)
        todo = list(self.children.get(oid, ()))
        while todo:
            child = todo.pop()
            self.failures.add(child, f"object {child} was not {self.verb}: its delta parent "
                                     f"{self.items[child].header.parent} failed", corrupt)
            todo += self.children.get(child, ())


def chain_depth(store: Store, oid: str) -> int:
    """How many deltas ``oid``'s chain has in ``store``, from the headers' parent ids (not their
    depth fields, which a remote's store kept newest whole may understate). A header that cannot
    be read counts as the end of the chain: decoding the chain then fails on its own."""
    depth = 0
    while depth <= MAX_DELTA_DEPTH:
        try:
            oid = store.header(oid, quarantine=False).parent
        except (CorruptObjectError, ObjectMissingError):
            return depth
        if oid is None:
            return depth
        depth += 1
    return depth


def links_allowed() -> bool:
    """Whether transfers between two local stores may hard-link (or reflink) object files:
    yes unless ``MODELGIT_LINKS=0`` (then every object is copied, as ``git clone
    --no-hardlinks`` does: a damaged file then damages one store only)."""
    return os.environ.get("MODELGIT_LINKS", "1") != "0"


def link_source(src: Store, dst: Store, oid: str):
    """A temporary file in ``dst`` linked to ``src``'s copy of ``oid`` (None: copy instead)."""
    path_of = getattr(src.backend, "path_of", None)
    if path_of is None or not links_allowed():
        return None
    return dst.backend.link_temp(path_of(Store._key(oid)))


def write_object(dst: Store, oid: str, head: bytes, payload) -> None:
    """Write an object durable in batches where the backend stages (writeback started early,
    fdatasync at commit), else atomically at once."""
    stage = getattr(dst.backend, "stage", None)
    if stage is not None:
        stage(Store._key(oid), head, payload)
    elif head:
        dst.backend.write_atomic(Store._key(oid), bytes(head) + bytes(payload))
    else:
        dst.backend.write_atomic(Store._key(oid), payload)


class CopySink:
    """What a fetch writes: each object as it came, parents first (staged in order).

    An object is linked from the source's file when both stores are local directories (see
    :meth:`~modelgit.store.backends.LocalBackend.link_temp`); its header is rewritten (and the
    object copied) only when the depth it states is not the depth of its chain here: a remote
    kept newest whole understates depths, and this store's headers must tell the truth. A delta
    whose parent here is already at the end of a chain as long as allowed is stored whole.
    """

    def __init__(self, dst: Store):
        self.dst = dst
        self.linked = 0
        self._lock = threading.Lock()

    def tree(self, root: str) -> "_CopyTree":
        return _CopyTree(self)

    def visible(self) -> None:
        """Make what was written so far readable (staged objects are not until committed)."""
        self.dst.flush()


class _CopyTree:
    def __init__(self, sink: CopySink):
        self.sink, self.depth = sink, {}

    def read(self, item: Item):
        if item.blob is not None:
            return item.blob, None
        handle = link_source(item.source.store, self.sink.dst, item.oid)
        if handle is not None:
            try:
                return self.sink.dst.backend.read_temp(handle), handle
            except OSError:
                self.discard(handle)
        return item.read(), None

    def discard(self, handle) -> None:
        if handle is not None:
            self.sink.dst.backend.discard_temp(handle)

    def failed(self, oid: str, parent_content) -> None:
        pass

    def accept(self, item: Item, blob, handle, content, parent_content) -> None:
        head = unpack_header(blob)
        depth = 0
        if head.parent is not None:
            depth = self.depth.get(head.parent)
            if depth is None:  # the parent is in this store already
                depth = chain_depth(self.sink.dst, head.parent)
            depth += 1
        dst = self.sink.dst
        if head.encoding is DELTA16:
            dst.use_delta16()  # before the object lands: older modelgit must refuse this store
        if depth > MAX_DELTA_DEPTH:
            # a delta on an object that is itself deep here: stored whole instead (its verified
            # content is at hand), so that every chain here stays readable
            self.discard(handle)
            encoding, payload = encode_standalone(content, DTYPES[head.dtype].itemsize,
                                                  head.dtype in FLOAT_DTYPES)
            write_object(dst, item.oid, pack_header(encoding, 0, head.dtype, head.shape,
                                                    head.raw_len, None, head.sumsq), payload)
            self.depth[item.oid] = 0
            return
        self.depth[item.oid] = depth
        if depth != head.depth:
            self.discard(handle)
            new_head = pack_header(head.encoding, depth, head.dtype, head.shape, head.raw_len,
                                   head.parent, head.sumsq, head.hints)
            write_object(dst, item.oid, new_head, memoryview(blob)[head.payload_offset:])
        elif handle is not None:
            dst.backend.publish([(handle, Store._key(item.oid))])
            with self.sink._lock:
                self.sink.linked += 1
        else:
            write_object(dst, item.oid, b"", blob)

    def abort(self) -> None:
        pass

    def done(self) -> None:
        pass


def local_damage(error: CorruptObjectError, store: Store, verb: str) -> str:
    """One line for an object found damaged in the local store during a transfer."""
    where = (f"moved to {QUARANTINE}/{error.oid}" if error.quarantined
             else f"delete {Store._key(error.oid)} there")
    return (f"object {error.oid} is corrupt in the local store at {store.url} ({error.reason}): "
            f"not {verb}, {where}")


class Retry(Exception):
    """A fetch's delta root needs a parent that the local store turned out not to have whole."""


def stored_size(store: Store, oid: str) -> int | None:
    try:
        return store.stored_size(oid)
    except FileNotFoundError:
        return None


def content_of(stores: list[Store], oid: str, verify: bool = True):
    """The content of ``oid`` (``verify``: checked against its id) from the first of ``stores``
    that gives it."""
    error = None
    for store in stores:
        try:
            return store._load(oid, verify=verify)[1]
        except (CorruptObjectError, ObjectMissingError) as exc:
            error = error or exc
    raise error
