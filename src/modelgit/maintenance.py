"""Keeping a store healthy: what it holds (``stats``), whether it is whole (``verify``), and
what it no longer needs (``gc``). Re-exported by :mod:`modelgit.checkpoint`, the module of the
high-level calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CorruptObjectError, ManifestError, ObjectMissingError, StoreError
from .manifest import Manifest
from .store import Store

__all__ = ["GC_GRACE_SECONDS", "StoreReport", "store_report", "verify", "collect_garbage"]


@dataclass
class StoreReport:
    url: str
    refs: dict[str, str]
    logical_bytes: int  # bytes of all ref'd checkpoints as files (what copies would cost)
    content_bytes: int  # decoded bytes of distinct objects (after dedup)
    stored_bytes: int  # bytes on disk (after dedup and encoding)
    objects: int
    by_encoding: dict[str, dict[str, int]]

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _ref_manifests(store: Store) -> dict[str, Manifest]:
    out = {}
    for name, oid in store.refs().items():
        out[name] = Manifest.loads(store.get(oid), f"ref {name}")
    return out


def store_report(store: Store) -> StoreReport:
    stats = store.stats()
    manifests = _ref_manifests(store)
    return StoreReport(store.url, store.refs(), sum(m.logical_bytes for m in manifests.values()),
                       stats.content_bytes, stats.stored_bytes, stats.objects, stats.by_encoding)


def _needs(manifest: Manifest) -> dict[str, str]:
    """{object id: what needs it} of a manifest ("tensor T of FILE", "header of FILE")."""
    out = {}
    for record in manifest.files:
        for key, oid in record.options.items():
            out.setdefault(oid, f"{key} of {record.path}")
        for tensor in record.tensors:
            for oid in tensor.chunks:
                out.setdefault(oid, f"tensor {tensor.name!r} of {record.path}" if tensor.name
                               else record.path)
    return out


def _missing_problems(store: Store, named: dict[str, Manifest]) -> list[str]:
    """One line per object that a manifest in ``named`` ({label: manifest}) needs and the store
    lacks, naming the first manifest that needs it and how many others do."""
    needed: dict[str, list[str]] = {}
    for label, manifest in named.items():
        for oid, what in _needs(manifest).items():
            needed.setdefault(oid, []).append(f"{label} ({what})")
    problems = []
    for oid in sorted(needed):
        if not store.has(oid):
            users = needed[oid]
            more = f" and {len(users) - 1} more" if len(users) > 1 else ""
            problems.append(f"object {oid} is missing from the store at {store.url}; needed by "
                            f"{users[0]}{more}. Fetch it from a remote that has it (`modelgit "
                            "fetch` in a git repository), or add that checkpoint again")
    return problems


def verify(store: Store, manifests: list[Manifest] | dict[str, Manifest] | None = None,
           named: dict[str, Manifest] | None = None) -> list[str]:
    """Check the store; return one message per problem (empty: all is well).

    Args:
        manifests: check only what these manifests need (a list, or ``{label: manifest}`` to
            name them in messages): each object present and decoding to its id. Without them,
            every object in the store is decoded and hash-checked, and every ref's manifest (and
            every manifest in ``named``) is checked for missing objects.
        named: more manifests whose objects must be present, by label (e.g. those in git's
            index: ``{"git index entry model.safetensors@<blob>": manifest}``).
    """
    if manifests is not None:
        wanted = dict(manifests) if isinstance(manifests, dict) else \
            {f"manifest {i + 1}": m for i, m in enumerate(manifests)}
        ids = sorted(set().union(*(m.object_ids() for m in wanted.values())))
        return _missing_problems(store, wanted) + store.verify([oid for oid in ids if store.has(oid)])
    problems = store.verify()
    wanted = {}
    for name, oid in store.refs().items():
        try:
            wanted[f"ref {name}"] = Manifest.loads(store.get(oid), f"ref {name}")
        except ObjectMissingError:
            problems.append(f"ref {name} points at manifest {oid}, which is missing from the "
                            f"store at {store.url}; delete the ref (`modelgit refs --delete "
                            f"{name}`) or add its checkpoint again")
        except (CorruptObjectError, ManifestError) as exc:
            problems.append(f"ref {name}: its manifest {oid} cannot be read ({exc})")
    for name, label, oid in _history_roots(store):
        try:
            wanted[label] = Manifest.loads(store.get(oid), label)
        except ObjectMissingError:
            problems.append(f"{label} (a version kept by the ref's history) is manifest {oid}, "
                            f"which is missing from the store at {store.url}; forget it with "
                            f"`modelgit refs --expire AGE {name}`")
        except (CorruptObjectError, ManifestError) as exc:
            problems.append(f"{label}: its manifest {oid} cannot be read ({exc})")
    wanted.update(named or {})
    return problems + _missing_problems(store, wanted)


def _history_roots(store: Store) -> list[tuple[str, str, str]]:
    """(ref name, label, manifest id) of every earlier version a ref's history keeps (the
    current one, ``NAME@{0}``, is the ref itself)."""
    out = []
    for name, current in store.refs().items():
        for index, entry in enumerate(store.ref_history(name)):
            if entry.manifest != current or index > 0:
                out.append((name, f"ref {name}@{{{index}}}", entry.manifest))
    return out


# unreferenced objects younger than this are kept by gc: a git command may still commit them
GC_GRACE_SECONDS = 3600


def collect_garbage(store: Store, keep: list[Manifest] = (), dry_run: bool = False,
                    extra_roots=None, grace_seconds: float = GC_GRACE_SECONDS):
    """Remove objects that no ref, no ref's history (every earlier version of a ref is kept
    until ``refs --expire`` forgets it) and no manifest in ``keep`` reaches. Returns a GcResult.

    ``extra_roots`` (a callable returning manifests, e.g. those of a git history) is called under
    the store's exclusive lock, like the refs are read, so an add finishing meanwhile is kept.
    Objects written or reused within the last ``grace_seconds`` are kept as well (0: none), for
    writers whose results are referenced only after they release the lock.
    """
    def live() -> set[str]:
        ids: set[str] = set()
        for name, oid in store.refs().items():
            ids.add(oid)
            try:
                ids |= Manifest.loads(store.get(oid), f"ref {name}").object_ids()
            except ObjectMissingError:  # what it protects is unknown: delete nothing
                raise StoreError(f"ref {name} points at manifest {oid}, which is missing from the "
                                 f"store at {store.url}, so gc cannot tell which objects it needs; "
                                 f"add its checkpoint again or delete the ref (`modelgit refs "
                                 f"--delete {name}`), then run gc") from None
        for name, label, oid in _history_roots(store):
            ids.add(oid)
            try:
                ids |= Manifest.loads(store.get(oid), label).object_ids()
            except ObjectMissingError:  # the version is gone already: nothing of it to keep
                continue
        for manifest in [*keep, *(extra_roots() if extra_roots else [])]:
            ids |= manifest.object_ids()
        return ids

    return store.gc(live, dry_run=dry_run, grace_seconds=grace_seconds)
