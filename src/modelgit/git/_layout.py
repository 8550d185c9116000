"""The layout of a remote's object store: newest whole, older versions as deltas on newer ones.

A pusher's store keeps each chunk's versions as it added them: the first standalone, each next
one a delta on the one before. A clone of the newest version from such a layout has to fetch
every ancestor too (1.36 GB for a 1.02 GB checkpoint with four versions). A remote's store is
kept the other way round, as git's packfiles keep the newest object whole: per lineage (the
versions of one chunk, linked by the pusher's delta parents) the newest version is stored
standalone and each older one as a delta on its successor. A clone then fetches the newest
version's objects and nothing else, and a store holding an old version gets the next one from
the small delta of the old one (see :mod:`._thin`), so pulls stay as small as before.

A push re-encodes what it uploads, from the content it decodes to verify it anyway:

* an uploaded object whose successor is uploaded too becomes a delta on it; the newest of each
  lineage is standalone (its own bytes reused, hard-linked from the pusher's store when they
  are the same file, when the pusher stores it standalone too);
* when the predecessor of the oldest uploaded version is already on the remote, standalone, it
  is re-encoded as a delta on its successor ("grafted"): a lineage pushed version by version
  ends up as compact as one pushed at once.

Chains stay at most ``MAX_DELTA_DEPTH`` deltas long. Re-encoding an object deepens every chain
through it, so the depth in the headers of a remote's store may understate the truth (the
store is marked format 2, which a modelgit that trusts them refuses); what is kept true is the
``below`` hint of each standalone object, the longest chain hanging under it. A graft that
would make a chain too long is not made: the predecessor stays standalone, which costs one
whole copy per ``MAX_DELTA_DEPTH + 1`` versions at worst.

Crash safety and concurrent readers: every object is written to a temporary file, and those of
a lineage are made visible newest first, so a delta is never visible before the object it
decodes from. A re-encoded object replaces the old file by rename (on object stores, by a copy
over the key): a reader gets the old encoding or the new one, whole, and both decode to the same
content; a fetch that planned with the old header plans that object again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..dtypes import DTYPES, FLOAT_DTYPES
from ..store import Store
from ..store.encodings import DELTA, encode_delta, encode_standalone
from ..store.ids import is_object_id
from ..store.objectfile import ObjectHeader, pack_header
from ..store.store import MAX_DELTA_DEPTH
from ._mover import Item, link_source

__all__ = ["Layout", "Graft", "plan_layout", "LayoutSink", "below_of", "older_versions"]


@dataclass(frozen=True)
class Graft:
    """A remote object (standalone there) re-encoded as a delta on an uploaded successor."""
    oid: str
    onto: str
    header: ObjectHeader  # the remote copy's header: dtype, shape, sumsq, its ``older`` hint


@dataclass
class Layout:
    """How the uploaded objects (and grafted remote ones) are stored on the remote."""
    newer: dict[str, str] = field(default_factory=dict)  # oid -> the object it is a delta on
    depth: dict[str, int] = field(default_factory=dict)
    older: dict[str, str] = field(default_factory=dict)  # oid -> the object that is a delta on it
    below: dict[str, int] = field(default_factory=dict)  # oid -> deltas hanging under it
    grafts: dict[str, Graft] = field(default_factory=dict)  # by the remote object's id
    legacy: bool = False  # the store held objects before it was kept newest whole

    def older_list(self, oid: str) -> list[str]:
        """The older versions stored as deltas through ``oid``, nearest first (its hint)."""
        out, current = [], oid
        while len(out) < MAX_DELTA_DEPTH:
            graft = self.grafts.get(current)
            if graft is not None:  # below it, the chain the remote already had
                out += older_versions(graft.header)
                break
            current = self.older.get(current)
            if current is None:
                break
            out.append(current)
        return out[:MAX_DELTA_DEPTH]

    def as_is(self, oid: str, header: ObjectHeader) -> bool:
        """Whether ``oid`` is stored on the remote byte for byte as the pusher stores it (a
        standalone object alone in its lineage: no delta on it, nothing to say in a hint)."""
        return (oid not in self.newer and oid not in self.older and not self.legacy
                and not self.below.get(oid) and header.parent is None and not header.hints)


def older_versions(header: ObjectHeader) -> list[str]:
    """The ``older`` hint of a remote object: ids of the older versions stored as deltas
    through it, nearest first (at most ``MAX_DELTA_DEPTH``); [] when absent or malformed."""
    text = header.hint("older")
    if not text:
        return []
    ids = text.split(".")[:MAX_DELTA_DEPTH]
    return ids if all(is_object_id(oid) for oid in ids) else []


def below_of(header: ObjectHeader, legacy: bool) -> int | None:
    """The ``below`` count of a standalone remote object; None when it is unknown (a store
    that held objects before it was kept newest whole may have deltas on it no hint counts)."""
    text = header.hint("below")
    if text is not None:
        return int(text) if text.isdigit() else None
    return None if legacy else 0


def plan_layout(headers: dict[str, ObjectHeader], remote_heads: dict[str, ObjectHeader],
                legacy: bool, replaced: set[str] = frozenset()) -> Layout:
    """Decide how each object to upload is stored on the remote.

    Args:
        headers: the pusher's headers of the objects to upload (their ``parent`` is the
            previous version of the same chunk, when the pusher stored a delta).
        remote_heads: the remote's headers of the parents of uploaded objects that the remote
            has (graft candidates).
        replaced: damaged remote copies being replaced: stored standalone, with an unknown
            number of deltas under them (``below`` = the maximum: never grafted).
    """
    layout = Layout(legacy=legacy)
    kids: dict[str, list[str]] = {}
    for oid, head in headers.items():
        if head.parent in headers and oid not in replaced and head.parent not in replaced:
            kids.setdefault(head.parent, []).append(oid)
    height = _heights(kids)
    for oid, children in kids.items():
        # the successor on the longest line of versions: the main line, most likely
        layout.newer[oid] = max(children, key=lambda k: (height.get(k, 0), k))
    for oid, newer in layout.newer.items():
        layout.older[newer] = oid
    _cap_depths(layout, headers)
    _graft(layout, headers, remote_heads, replaced)
    for oid in replaced:
        layout.below[oid] = MAX_DELTA_DEPTH
    for oid in list(headers) + list(layout.grafts):
        _below(layout, oid)
    return layout


def _heights(kids: dict[str, list[str]]) -> dict[str, int]:
    """Length of the longest line of successors of each object (iterative: lines can be long)."""
    height: dict[str, int] = {}
    for start in kids:
        stack = [(start, False)]
        while stack:
            oid, expanded = stack.pop()
            if oid in height:
                continue
            children = kids.get(oid, ())
            if expanded or not children:
                height[oid] = 1 + max((height[k] for k in children), default=-1)
                continue
            stack.append((oid, True))
            stack += [(k, False) for k in children if k not in height]
    return height


def _cap_depths(layout: Layout, headers: dict[str, ObjectHeader]) -> None:
    """Depth of every uploaded object from the newest of its lineage; a chain longer than
    allowed is cut: the object that would be too deep is stored standalone."""
    for head in [oid for oid in headers if oid not in layout.newer]:
        oid, depth = head, 0
        while True:
            layout.depth[oid] = depth
            older = layout.older.get(oid)
            if older is None:
                break
            if depth + 1 > MAX_DELTA_DEPTH:
                del layout.newer[older], layout.older[oid]
                oid, depth = older, 0
                continue
            oid, depth = older, depth + 1


def _graft(layout: Layout, headers: dict[str, ObjectHeader],
           remote_heads: dict[str, ObjectHeader], replaced: set[str]) -> None:
    """Re-encode a standalone remote predecessor as a delta on the oldest uploaded version,
    when the chain stays short enough."""
    for root in sorted(headers, key=lambda o: (layout.depth[o], o)):
        previous = headers[root].parent
        if previous is None or previous in headers or previous in layout.grafts \
                or root in replaced:
            continue
        remote = remote_heads.get(previous)
        if remote is None or remote.parent is not None or root in layout.older:
            continue
        mine = headers[root]
        if (remote.dtype, remote.raw_len) != (mine.dtype, mine.raw_len):
            continue
        below = below_of(remote, layout.legacy)
        if below is None or layout.depth[root] + 1 + below > MAX_DELTA_DEPTH:
            continue
        layout.grafts[previous] = Graft(previous, root, remote)
        layout.newer[previous] = root
        layout.older[root] = previous
        layout.depth[previous] = layout.depth[root] + 1


def _below(layout: Layout, oid: str) -> None:
    """Count the deltas hanging under ``oid`` (and under each object down its chain)."""
    chain = [oid]
    while chain[-1] not in layout.below and chain[-1] in layout.older:
        chain.append(layout.older[chain[-1]])
    bottom = chain[-1]
    if bottom not in layout.below:
        graft = layout.grafts.get(bottom)
        layout.below[bottom] = (below_of(graft.header, layout.legacy) or 0) if graft else 0
    for member in reversed(chain[:-1]):
        layout.below[member] = layout.below[layout.older[member]] + 1


class LayoutSink:
    """What a push writes: each lineage of uploaded objects in the remote's layout, made visible
    newest first once the whole lineage (one delta tree of the pusher's store) is written."""

    def __init__(self, local: Store, remote: Store, layout: Layout,
                 headers: dict[str, ObjectHeader]):
        self.local, self.remote, self.layout, self.headers = local, remote, layout, headers
        self.bytes = self.linked = self.reencoded = 0
        self._lock = threading.Lock()

    def visible(self) -> None:
        """What was written so far is readable already: a tree is published when it is done."""

    def tree(self, root: str) -> "_LayoutTree":
        return _LayoutTree(self)


class _LayoutTree:
    def __init__(self, sink: LayoutSink):
        self.sink = sink
        self.layout = sink.layout
        self.written: list[tuple[str, str, int]] = []  # (handle, key, bytes) in emission order
        self.linked = self.reencoded = 0

    # ---------------------------------------------------------------- the mover's calls
    def read(self, item: Item):
        if self.layout.as_is(item.oid, item.header):
            handle = link_source(self.sink.local, self.sink.remote, item.oid)
            if handle is not None:
                try:
                    return self.sink.remote.backend.read_temp(handle), handle
                except OSError:
                    self.discard(handle)
        return self.sink.local._read(item.oid), None

    def discard(self, handle) -> None:
        if handle is not None:
            self.sink.remote.backend.discard_temp(handle)

    def accept(self, item: Item, blob, handle, content, parent_content) -> None:
        """Emit what this verified object completes: its predecessor as a delta on it (an
        uploaded one, or a grafted remote one), and itself when it is the newest."""
        oid, previous = item.oid, item.header.parent
        if previous is not None and self.layout.newer.get(previous) == oid:
            graft = self.layout.grafts.get(previous)
            base = graft.header if graft else self.sink.headers[previous]
            self._delta(previous, base, parent_content, oid, content)
            self.reencoded += graft is not None
        if oid in self.layout.newer:
            self.discard(handle)
            return
        self._head(oid, item.header, blob, handle, content)

    def failed(self, oid: str, parent_content) -> None:
        """``oid`` could not be verified: a predecessor waiting to become a delta on it is
        stored standalone instead."""
        previous = self.sink.headers[oid].parent if oid in self.sink.headers else None
        if previous in self.sink.headers and self.layout.newer.get(previous) == oid:
            self._head(previous, self.sink.headers[previous], None, None, parent_content)

    def abort(self) -> None:
        for handle, _key, _size in self.written:
            self.discard(handle)
        self.written = []

    def done(self) -> None:
        """Publish newest first: every delta after the object it decodes from."""
        pairs = [(handle, key) for handle, key, _ in reversed(self.written)]
        if pairs:
            self.sink.remote.backend.publish(pairs)
        with self.sink._lock:
            self.sink.bytes += sum(size for _, _, size in self.written)
            self.sink.linked += self.linked
            self.sink.reencoded += self.reencoded

    # ---------------------------------------------------------------- encodings
    def _hints(self, oid: str, standalone: bool, payload_len: int) -> tuple[tuple[str, str], ...]:
        hints = []
        older = self.layout.older_list(oid)
        if older:
            hints.append(("older", ".".join(older)))
        below = self.layout.below.get(oid, 0)
        if standalone and (below or self.layout.legacy):
            hints.append(("below", str(below)))
        hints.append(("plen", str(payload_len)))
        return tuple(hints)

    def _emit(self, oid: str, parts, handle=None) -> None:
        if handle is None:
            handle = self.sink.remote.backend.write_temp(*parts)
            size = sum(memoryview(p).nbytes for p in parts)
        else:
            size = sum(memoryview(p).nbytes for p in parts)
            self.linked += 1
        self.written.append((handle, Store._key(oid), size))

    def _delta(self, oid: str, header: ObjectHeader, content, newer: str, newer_content) -> None:
        itemsize = DTYPES[header.dtype].itemsize
        payload = encode_delta(content, itemsize, newer_content)
        if payload is None:  # sizes differ (cannot happen for a planned pair): keep it whole
            self._head(oid, header, None, None, content)
            return
        head = pack_header(DELTA, self.layout.depth[oid], header.dtype, header.shape,
                           header.raw_len, newer, header.sumsq,
                           self._hints(oid, False, len(payload)))
        self._emit(oid, (head, payload))

    def _head(self, oid: str, header: ObjectHeader, blob, handle, content) -> None:
        if blob is not None and self.layout.as_is(oid, header):
            self._emit(oid, (blob,), handle)
            return
        self.discard(handle)
        if blob is not None and header.parent is None:  # the pusher's standalone bytes, reused
            encoding, payload = header.encoding, memoryview(blob)[header.payload_offset:]
        else:
            encoding, payload = encode_standalone(content, DTYPES[header.dtype].itemsize,
                                                  header.dtype in FLOAT_DTYPES)
        head = pack_header(encoding, 0, header.dtype, header.shape, header.raw_len, None,
                           header.sumsq, self._hints(oid, True, memoryview(payload).nbytes))
        self._emit(oid, (head, payload))
