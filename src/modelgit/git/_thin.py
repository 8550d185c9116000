"""Fetching a newer version through the deltas a newest-whole remote keeps on older ones.

A remote kept newest whole (:mod:`._layout`) stores the newest version of a chunk standalone and
each older version as a delta on its successor; the newest's ``older`` hint lists those older
versions, nearest first. A store that has one of them (a clone pulling the next revision) gets
the newest from the deltas between the two, which are usually far smaller than the newest
whole: each delta on the way stores ``older - newer``, so the newer content is the older content
minus that difference (:func:`~modelgit.store.encodings.delta_parent_content`).

The result is verified against its id like any fetched object, then stored here as a delta on
the older version this store has (:meth:`Store.put`, which decides as an add does). Whatever goes
wrong (a hint that lies, a delta that is not what the hint says, a damaged copy) falls back to
fetching the object itself, which reports damage as usual.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..dtypes import DTYPES
from ..errors import CorruptObjectError, ObjectMissingError
from ..store import Store
from ..store.encodings import DELTA, delta_parent_content
from ..store.ids import object_id
from ..store.objectfile import unpack_header
from ._layout import older_versions
from ._mover import Item, stored_size

__all__ = ["ThinPlan", "plan_thin", "fetch_thin"]

log = logging.getLogger("modelgit.transfer")


@dataclass(frozen=True)
class ThinPlan:
    """Get ``item`` (located on a remote) from the deltas of ``olders`` on that remote, the
    last of which this store has."""
    item: Item
    olders: tuple[str, ...]
    bytes: int  # what the deltas weigh together


def plan_thin(local: Store, item: Item) -> ThinPlan | None:
    """A thin fetch of a located object when this store has an older version of it and the
    deltas cost less than the object; None otherwise. Costs one stat per delta on the remote,
    and nothing when no older version is here (a clone)."""
    olders = older_versions(item.header)
    for index, oid in enumerate(olders):
        if local.has(oid):
            path = tuple(olders[:index + 1])
            break
    else:
        return None
    remote = item.source.store
    sizes = [stored_size(remote, oid) for oid in (item.oid, *path)]
    if any(size is None for size in sizes) or sum(sizes[1:]) >= sizes[0]:
        return None
    return ThinPlan(item, path, sum(sizes[1:]))


def fetch_thin(local: Store, plan: ThinPlan) -> int | None:
    """Rebuild ``plan.item`` from the older version here and the deltas on the remote, verify
    it, and store it; returns the bytes downloaded, or None when it could not be done (the
    object is then fetched whole)."""
    item, remote = plan.item, plan.item.source.store
    head = item.header
    try:
        base = local._load(plan.olders[-1], with_size=True)  # verified: the base of everything
        content = base[1]
        moved = 0
        newer = [item.oid, *plan.olders[:-1]]
        for oid, successor in reversed(list(zip(plan.olders, newer))):
            blob = remote._read(oid)
            moved += len(blob)
            older = unpack_header(blob)
            if older.encoding is not DELTA or older.parent != successor \
                    or (older.dtype, older.raw_len) != (head.dtype, head.raw_len):
                raise ValueError(f"{oid} on {item.source.label} is not a delta on {successor}")
            content = delta_parent_content(memoryview(blob)[older.payload_offset:],
                                           DTYPES[head.dtype].itemsize, head.raw_len, content)
        if object_id(head.dtype, head.shape, content) != item.oid:
            raise ValueError("the rebuilt content does not match its id")
        local.put(head.dtype, head.shape, content, parent=plan.olders[-1], oid=item.oid,
                  parent_loaded=base)
    except (ValueError, CorruptObjectError, ObjectMissingError, OSError) as exc:
        # (a full disk, StoreFullError, is raised: fetching more would not help)
        log.info("fetch %s through older versions failed (%s); fetching it whole", item.oid, exc)
        return None
    return moved
