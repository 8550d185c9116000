"""How a manifest is named: the ``M`` of ``materialize M``, ``ls M``, ``verify M``,
``gc --keep M`` and ``add --parent M``.

A spec is tried as each of these, in this order, and the first that matches is taken:

1. an existing file that is a manifest (its first bytes are ``modelgit-manifest``);
2. ``NAME@{N}``: the N-th earlier manifest ref ``NAME`` pointed at (``@{0}`` is the current
   one; ``modelgit refs --history NAME`` lists them);
3. a ref name;
4. a full manifest id (64 hex digits);
5. a unique prefix of a manifest id, at least 8 hex digits; a prefix that several manifests
   share is an error that lists them.

An existing file that is not a manifest (a checkpoint) matches none of these: naming one is an
error that says so and names its manifest file or ref, never an attempt to read a checkpoint as
a manifest.
"""

from __future__ import annotations

import difflib
import os
import re

from .errors import UsageError
from .manifest import Manifest, is_manifest
from .store import Store

__all__ = ["load_manifest", "resolve_manifest_id", "MIN_PREFIX"]

MIN_PREFIX = 8  # hex digits of the shortest id prefix accepted
_HISTORY = re.compile(r"^(?P<name>.+)@\{(?P<index>\d+)\}$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _file_kind(path: str) -> str | None:
    """"manifest" or "other" for an existing regular file, None when ``path`` is not one."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        return "manifest" if is_manifest(handle.read(32)) else "other"


def load_manifest(store: Store | None, spec: str) -> Manifest:
    """The manifest ``spec`` names (see the module docstring for the order).

    Args:
        store: where refs and ids are looked up (None: only manifest files are accepted).
    Raises:
        UsageError: ``spec`` names nothing, names a file that is not a manifest, or is an id
            prefix that several manifests share.
        ObjectMissingError, ManifestError: the named manifest is missing or unreadable.
    """
    kind = _file_kind(spec)
    if kind == "manifest":
        with open(spec, "rb") as handle:
            return Manifest.loads(handle.read(), spec)
    if store is None:
        raise UsageError(_not_found(None, spec, kind))
    oid, label = resolve_manifest_id(store, spec, kind)
    return Manifest.loads(store.get(oid), label)


def resolve_manifest_id(store: Store, spec: str, file_kind: str | None = None) -> tuple[str, str]:
    """(manifest id, label for messages) of a spec that is not a manifest file: ``NAME@{N}``, a
    ref name, a full id or a unique id prefix.

    Raises:
        UsageError: nothing matches, or an id prefix is ambiguous.
    """
    history = _HISTORY.match(spec)
    if history and store.has_ref(history["name"]):
        entries = store.ref_history(history["name"])
        index = int(history["index"])
        if index >= len(entries):
            raise UsageError(f"{spec}: ref {history['name']!r} has {len(entries)} version(s) in its "
                             f"history (@{{0}} to @{{{max(len(entries) - 1, 0)}}}); `modelgit refs "
                             f"--history {history['name']}` lists them")
        return entries[index].manifest, f"ref {spec}"
    if store.has_ref(spec):
        return store.get_ref(spec), f"ref {spec}"
    if _HEX.match(spec) and len(spec) == 64 and store.has(spec.lower()):
        return spec.lower(), spec
    if _HEX.match(spec) and MIN_PREFIX <= len(spec) < 64:
        found = _manifests_with_prefix(store, spec.lower())
        if len(found) == 1:
            return found[0], f"manifest {found[0][:12]}"
        if len(found) > 1:
            raise UsageError(f"{spec!r} is the prefix of {len(found)} manifest ids "
                             f"({', '.join(oid[:16] for oid in found[:5])}): give more digits")
    raise UsageError(_not_found(store, spec, file_kind))


def _manifests_with_prefix(store: Store, prefix: str) -> list[str]:
    out = []
    for oid in store.object_ids_with_prefix(prefix):
        try:
            head = store.get(oid)[:32]
        except Exception:  # noqa: BLE001  a damaged object is not a manifest we could read
            continue
        if is_manifest(head):
            out.append(oid)
    return out


def _not_found(store: Store | None, spec: str, file_kind: str | None) -> str:
    if file_kind == "other":
        from .checkpoint import default_ref

        ref = default_ref(spec)
        named = (f"or its ref {ref!r}" if store is not None and store.has_ref(ref)
                 else f"or its ref (after `modelgit add {spec}`: {ref!r})")
        return (f"{spec} is a checkpoint (or another file), not a manifest: name its manifest "
                f"file ({spec}.manifest, written by `modelgit add {spec}`) {named}")
    if store is None:
        return f"{spec}: no such manifest file"
    refs = list(store.refs())
    close = difflib.get_close_matches(spec, refs, n=1, cutoff=0.6)
    hint = f" (did you mean ref {close[0]!r}?)" if close else ""
    short = (f"; an id prefix needs at least {MIN_PREFIX} hex digits"
             if _HEX.match(spec) and len(spec) < MIN_PREFIX else "")
    return (f"{spec!r} is no manifest file, ref, ref@{{N}} or manifest id in the store at "
            f"{store.url}{hint}{short}; `modelgit refs` lists the refs")
