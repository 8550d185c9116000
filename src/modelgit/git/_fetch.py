"""Fetching objects from object remotes, each verified before it is written (see
:mod:`modelgit.git.transfer` for what is verified, and :mod:`._mover` for how objects move).

A fetch locates each missing object on the remotes (a header read each), then:

* gets it through the deltas a newest-whole remote keeps on an older version this store has,
  when that is cheaper than the object whole (:mod:`._thin`: a pull of the next revision);
* otherwise fetches it with the delta ancestors it needs that this store lacks, parents first.

A delta's parent may be here in an encoding that itself needs the object being fetched (this
store has B as a delta on A, the remote has A as a delta on B, and A was lost here): then B is
fetched again from the remote too, so that no chain loops.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ..errors import CorruptObjectError, ObjectMissingError
from ..progress import progress_bar
from ..store import Store
from ..store.derived import DERIVED, recipe_input_ids
from ..store.objectfile import unpack_header
from ..store.store import MAX_DELTA_DEPTH
from ._mover import Failures, Item, Mover, Retry, Side, TransferResult
from ._thin import fetch_thin, plan_thin

__all__ = ["fetch_objects", "missing_ancestors", "TRANSFER_THREADS", "HEAD_BYTES"]

TRANSFER_THREADS = 8  # I/O bound: more than the cores
HEAD_BYTES = 4096  # one read gets an object's header (and all of a small object)


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
    linked = 0
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool, local.writing(), \
            progress_bar(0, "fetch objects", progress) as bar:
        missing = {oid for oid in wanted if not local.has(oid)}
        skipped = len(wanted) - len(missing)
        for oid in sorted(wanted - missing):
            missing |= missing_ancestors(local, oid)
            missing |= _missing_inputs(local, oid)
        located = dict(zip(sorted(missing), pool.map(lambda o: _locate(sides, o, context),
                                                     sorted(missing))))
        thin = _fetch_thin(pool, local, located, bar)
        sent.update(thin)
        missing -= set(thin)
        retry: set[str] = set()
        for _attempt in range(MAX_DELTA_DEPTH + 2):  # a pass per damaged local parent found
            items = _plan_fetch(pool, local, sides, missing, failures, context, located)
            located = {}
            if any(item.header.encoding is DERIVED for item in items.values()):
                local.use_derived()  # before the first is written (see store.derived)
            mover = Mover(local, items, lambda p, v: _local_parent(local, p, v), failures,
                           "fetched", bar)
            mover.run(pool)
            local.flush()  # what was fetched is visible to the next pass
            sent.update(mover.sent)
            linked += mover.sink.linked
            if not mover.retry or mover.retry == retry:  # done, or no progress
                break
            retry = mover.retry
            missing = mover.dropped()  # planned again: now from the damaged parent down
        for oid in sorted(mover.dropped()):
            failures.add(oid, f"object {oid} was not fetched: a delta ancestor of it is damaged "
                              f"or missing in the local store at {local.url} and could not be "
                              "fetched again", True)
    result = TransferResult(len(sent), sum(sent.values()), skipped, linked=linked)
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


def _fetch_thin(pool, local: Store, located: dict, bar) -> dict[str, int]:
    """Fetch through older versions here what is cheaper that way; {oid: bytes downloaded}."""
    plans = [plan for plan in pool.map(lambda pair: plan_thin(local, pair[1][0]),
                                       [p for p in sorted(located.items()) if p[1][0] is not None])
             if plan is not None]
    done = {}
    for plan, moved in zip(plans, pool.map(lambda plan: fetch_thin(local, plan), plans)):
        if moved is not None:
            done[plan.item.oid] = moved
            bar.update(moved)
    if done:
        local.flush()  # visible to the plan of the rest: they may be delta parents there
    return done


def missing_ancestors(local: Store, oid: str) -> set[str]:
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
                context: str, located: dict | None = None) -> dict[str, Item]:
    """Find each missing object and the delta ancestors it needs on the remotes (a header read
    each, unless ``located`` has it), rounds going from children to parents until every chain
    reaches the local store."""
    items: dict[str, Item] = {}
    located = located or {}
    todo = sorted(missing)
    while todo:
        unknown = [oid for oid in todo if oid not in located]
        found = dict(zip(unknown, pool.map(lambda o: _locate(sides, o, context), unknown)))
        following: set[str] = set()
        for oid in todo:
            item, problem = located.get(oid) or found[oid]
            if item is None:
                failures.add(oid, problem[0], problem[1])
                continue
            items[oid] = item
            if item.header.encoding is DERIVED:
                # a recipe travels with the inputs this store lacks, never with computed bytes
                following |= {i for i in _inputs(item) if not local.has(i)}
            parent = item.header.parent
            if parent and parent not in items:
                if not local.has(parent):
                    following.add(parent)
                    continue
                needs = missing_ancestors(local, parent)
                if needs & (set(items) | set(todo)):
                    # the copy here decodes through what is being fetched: fetch it again too
                    following.add(parent)
                else:
                    following |= needs
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


def _missing_inputs(local: Store, oid: str) -> set[str]:
    """Inputs of ``oid`` (present; a derived object) that the local store lacks."""
    try:
        return {i for i in local.derived_inputs(oid) if not local.has(i)}
    except (CorruptObjectError, ObjectMissingError):
        return set()  # found damaged (moved aside) or gone: reading it reports it


def _inputs(item: Item) -> list[str]:
    """The input ids of derived ``item`` as its remote copy names them ([] when that copy does
    not parse: verifying it fails later and names it)."""
    if item.blob is None:
        item.blob = item.read()  # kept: the move reads it from there, not from the remote again
    blob = item.blob
    try:
        return recipe_input_ids(memoryview(blob)[unpack_header(blob).payload_offset:])
    except ValueError:
        return []


def _locate(sides: list[Side], oid: str, context: str) -> tuple[Item | None, tuple[str, bool] | None]:
    """(item, None) from the first remote with a readable header for ``oid``, else
    (None, (message, corrupt))."""
    damaged = []
    for side in sides:
        key = Store._key(oid)
        read_head = getattr(side.store.backend, "read_head", None)
        try:
            head = read_head(key, HEAD_BYTES) if read_head else side.store.backend.read(key)
            whole = not read_head or len(head) < HEAD_BYTES
            try:
                header = unpack_header(head)
            except ValueError:
                if whole:
                    raise
                head, whole = side.store.backend.read(key), True  # a header over HEAD_BYTES
                header = unpack_header(head)
        except FileNotFoundError:
            continue
        except ValueError as exc:
            damaged.append(f"object {oid} on {side.label} is corrupt ({exc}); it was not fetched")
            continue
        if whole:
            return Item(oid, side, header, head), None
        return Item(oid, side, header, head=head), None  # the move reads only the rest
    if damaged:
        return None, ("; ".join(damaged), True)
    names = ", ".join(side.label for side in sides) or "(no remotes)"
    return None, (f"object {oid}{' of ' + context if context else ''} is in neither the local store "
                  f"nor any object remote: {names}", False)


