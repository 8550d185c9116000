"""The history of a store's refs: every manifest a ref has pointed at (a reflog).

``modelgit add model.safetensors`` twice moves the file's ref to the second version; the first
stays reachable through the ref's history, and ``gc`` keeps every manifest a history names, so
a version is never garbage without a word. ``refs --expire AGE`` (or deleting the ref) is what
lets old versions go.

Layout: one empty-or-note object per entry, ``logs/<ref name>/<ns>-<manifest id>``, where
``<ns>`` is the time of the move in nanoseconds (20 digits, so names sort by time). One key per
entry, written atomically, means two processes moving the same ref never lose each other's
entry (no read-modify-write of a shared log), on a local disk or an fsspec store alike.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from .backends import Backend
from .ids import is_object_id

__all__ = ["RefEntry", "history", "record", "expire", "delete_history", "HISTORY_PREFIX"]

HISTORY_PREFIX = "logs"
_ENTRY = re.compile(r"^(\d{20})-([0-9a-f]{64})$")


@dataclass(frozen=True)
class RefEntry:
    """One position of a ref: the manifest it pointed at, from ``time_ns`` on."""

    time_ns: int
    manifest: str
    key: str  # the backend key of the entry


def history(backend: Backend, name: str) -> list[RefEntry]:
    """Every entry of ref ``name``, newest first (``name@{0}`` is the first)."""
    directory = f"{HISTORY_PREFIX}/{name}"
    entries = []
    for key in backend.list(directory):
        parent, _, leaf = key.rpartition("/")
        match = _ENTRY.match(leaf)
        # logs/a/b/... belongs to ref a/b, not a: only direct children are this ref's
        if parent == directory and match and is_object_id(match.group(2)):
            entries.append(RefEntry(int(match.group(1)), match.group(2), key))
    return sorted(entries, key=lambda e: (e.time_ns, e.key), reverse=True)


def record(backend: Backend, name: str, old: str | None, new: str, note: str = "",
           old_since: float | None = None) -> None:
    """Record that ref ``name`` moves from ``old`` to ``new`` (before the ref itself moves).

    A ref written before histories existed has none: its current manifest is recorded first,
    dated ``old_since`` (the ref file's mtime), so that moving it keeps the old version too.
    """
    entries = history(backend, name)
    now = time.time_ns()
    if old is not None and (not entries or entries[0].manifest != old):
        since = int(old_since * 1e9) if old_since is not None else now - 1
        backend.write_atomic(_key(name, min(since, now - 1), old), b"")
    if old != new or not entries:
        backend.write_atomic(_key(name, now, new), note.encode("utf-8", "replace")[:4096])


def expire(backend: Backend, name: str, current: str | None, before_ns: int) -> int:
    """Delete the entries of ``name`` older than ``before_ns``, never the one of the manifest the
    ref points at now (its newest entry); returns how many were deleted."""
    removed = 0
    for index, entry in enumerate(history(backend, name)):
        if index == 0 and entry.manifest == current:
            continue
        if entry.time_ns < before_ns:
            backend.delete(entry.key)
            removed += 1
    return removed


def delete_history(backend: Backend, name: str) -> None:
    for entry in history(backend, name):
        backend.delete(entry.key)


def _key(name: str, time_ns: int, manifest: str) -> str:
    return f"{HISTORY_PREFIX}/{name}/{time_ns:020d}-{manifest}"
