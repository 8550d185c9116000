"""The content-addressed tensor object store.

Objects are keyed by :func:`~modelgit.store.ids.object_id` of their decoded content and laid out
as ``objects/<2 hex>/<62 hex>`` (the layout git and the Hugging Face cache use), each in the
format of :mod:`~modelgit.store.objectfile`. Named refs (``refs/<name>``) point at manifest
objects; they and every manifest their histories name (``logs/<name>/``, see
:mod:`~modelgit.store.refs`) are the roots of ``gc``.

Concurrency: writing an object is idempotent and atomic, so any number of processes may add at
once. ``gc`` deletes, so it takes the store lock exclusively; writers hold it shared for the
whole of an add (see :meth:`Store.writing`), which keeps gc from deleting an object that an add
has just found present and decided not to write. A writer whose result is referenced only after
it lets go of the lock (git records a filter's manifest later) is covered by gc's grace period:
objects written, or found present and reused (:meth:`Store.freshen`), within it are kept.

An object's id is the hash of the very bytes it is encoded from: :meth:`Store.put` hashes and
encodes one buffer, which callers must not change meanwhile (never a mapping of a file someone
else may write: see :mod:`modelgit._reading`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from math import prod
from typing import Callable, Iterable, Iterator

from ..dtypes import DTYPES, FLOAT_DTYPES
from ..errors import CorruptObjectError, ObjectMissingError, StoreError, UsageError
from .backends import Backend, LocalBackend, open_backend
from .encodings import (DELTA16, DELTA16_FORMAT, DELTA_ADVANTAGE, encode_best_delta,
                        encode_standalone, sum_of_squares)
from ._derived_io import DerivedObjects
from .derived import DERIVED, DERIVED_FORMAT, compute, parse_recipe
from .ids import is_object_id, object_id
from .objectfile import ObjectHeader, pack_header, unpack_header
from . import refs as refs_history

__all__ = ["Store", "PutResult", "StoreStats", "GcResult", "MAX_DELTA_DEPTH", "QUARANTINE",
           "decode_object", "NEWEST_WHOLE_FORMAT"]

STORE_FORMAT = 1  # a store whose headers tell the true depth of every delta chain
#: a remote's store kept newest whole (:mod:`modelgit.git._layout`): an object re-encoded as a
#: delta against a newer one deepens the chains through it, so headers may understate depths.
#: A modelgit that trusts header depths (format 1 only) must not write to such a store.
NEWEST_WHOLE_FORMAT = 2
NEWEST_WHOLE = "newest-whole"
#: the newest format this modelgit reads: 3 for a store holding delta16 objects (bf16/fp16
#: deltas, :mod:`.half_codec`) or derived objects (:mod:`.derived`)
MAX_FORMAT = max(DELTA16_FORMAT, DERIVED_FORMAT)
CONFIG_KEY = "modelgit-store.json"
MAX_DELTA_DEPTH = 8  # a checkout decodes at most this many ancestors of an object
#: no object modelgit writes is larger: a tensor's chunks are at most CHUNK_BYTES (4 MiB), blobs
#: hold manifests and file headers (a safetensors header is at most 100 MB). A header promising
#: more is refused before its payload is decoded: 256 KiB of zstd can claim 8 GiB of zeros.
MAX_OBJECT_BYTES = 256 * 1024 * 1024
_STALE_TMP_SECONDS = 3600
QUARANTINE = "quarantine"  # where damaged objects are moved: ``quarantine/<id>``


def decode_object(oid: str, blob, parent_content=None,
                  inputs: Callable[[object], object] | None = None) -> tuple[ObjectHeader, object]:
    """(header, content) of the stored bytes ``blob`` of object ``oid``, checked against the id.

    This is how an object in transit is verified before it is written anywhere.

    Args:
        parent_content: the decoded content of the object's delta parent (its header names
            it), for a delta; ignored otherwise.
        inputs: for a derived object, gives the verified content of an input
            (:class:`~.derived.InputRef`); it may raise ObjectMissingError.
    Raises:
        ValueError: with the reason, when ``blob`` does not decode to content with id ``oid``.
        DerivedFunctionError: a derived object's function is unknown here.
    """
    head = _parse(blob)
    if head.encoding is DERIVED:
        if inputs is None:
            raise ValueError("a derived object, whose inputs were not given")
        recipe = parse_recipe(memoryview(blob)[head.payload_offset:], head.dtype, head.shape)
        raw = compute(recipe, head.dtype, head.shape, inputs)
        if object_id(head.dtype, head.shape, raw) != oid:
            raise ValueError(f"computing its recipe ({recipe.fn}) does not reproduce its id")
        return head, raw
    if head.parent is not None and parent_content is None:
        raise ValueError(f"delta against {head.parent}, whose content was not given")
    raw = _decode_payload(head, blob, parent_content if head.parent is not None else None)
    if object_id(head.dtype, head.shape, raw) != oid:
        raise ValueError("content hash does not match its id")
    return head, raw


def _parse(blob) -> ObjectHeader:
    """The header of ``blob``, checked for what the chain and the decoders rely on."""
    head = unpack_header(blob)
    if head.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {head.dtype!r}")
    expected = prod(head.shape) * DTYPES[head.dtype].itemsize
    if head.raw_len != expected:
        raise ValueError(f"header says {head.raw_len} bytes of content, but {head.dtype} "
                         f"{list(head.shape)[:8]} is {expected} bytes")
    if head.raw_len > MAX_OBJECT_BYTES:
        raise ValueError(f"header promises {head.raw_len} bytes of content, more than any object "
                         f"modelgit writes ({MAX_OBJECT_BYTES}); refused before decoding")
    if head.depth > MAX_DELTA_DEPTH:
        raise ValueError(f"delta chain depth {head.depth}, deeper than allowed ({MAX_DELTA_DEPTH})")
    return head


def _decode_payload(head: ObjectHeader, blob, parent_raw):
    try:
        return head.encoding.decode(memoryview(blob)[head.payload_offset:],
                                    DTYPES[head.dtype].itemsize, head.raw_len, parent_raw)
    except Exception as exc:  # any decoder failure on bad bytes is corruption
        raise ValueError(f"{head.encoding.name} payload does not decode: {exc}") from None


@dataclass(frozen=True)
class PutResult:
    oid: str
    written: bool  # False when the object was already present (dedup)
    stored_bytes: int  # bytes of the object file written (0 when not written)
    encoding: str | None


@dataclass
class StoreStats:
    objects: int = 0
    stored_bytes: int = 0  # bytes of object files
    content_bytes: int = 0  # decoded bytes of all distinct objects
    by_encoding: dict[str, dict[str, int]] = field(default_factory=dict)
    refs: int = 0


@dataclass
class GcResult:
    kept: int
    removed: int
    freed_bytes: int
    removed_tmp: int
    kept_young: int = 0  # unreferenced, but younger than the grace period (and their ancestors)
    removed_quarantined: int = 0  # damaged objects that had been moved aside


class Store(DerivedObjects):
    """A tensor object store on a :class:`Backend`. Open one with :meth:`Store.open`."""

    def __init__(self, backend: Backend, quarantine: bool = True, config: dict | None = None):
        self.backend = backend
        self.config = dict(config or {"format": STORE_FORMAT})
        # move an object found damaged aside (``quarantine/<id>``), so that the next fetch or
        # add writes a good copy: off for the stores of remotes, which a fetch only reads
        self.quarantine = quarantine
        self._writers = 0
        self._lock_cm = None
        self._writers_guard = threading.Lock()

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, location: str, create: bool = False, quarantine: bool = True,
             newest_whole: bool = False) -> "Store":
        """Open the store at a path or fsspec URL.

        Args:
            quarantine: move objects found damaged on reading to ``quarantine/<id>`` (see
                :meth:`get`); the stores of object remotes are opened without.
            newest_whole: when the store is created here, create it as a remote's store kept
                newest whole (see :meth:`use_newest_whole`).
        Raises:
            StoreError: when there is no store there and ``create`` is false, or when the store
                was made by a newer modelgit.
        """
        backend = open_backend(location)
        if backend.exists(CONFIG_KEY):
            config = json.loads(backend.read(CONFIG_KEY))
            if config.get("format", 0) > MAX_FORMAT:
                raise StoreError(
                    f"the store at {location} has format {config['format']}, newer than this "
                    f"modelgit understands ({MAX_FORMAT}); upgrade modelgit"
                )
            return cls(backend, quarantine, config)
        if create:
            config = ({"format": NEWEST_WHOLE_FORMAT, "layout": NEWEST_WHOLE} if newest_whole
                      else {"format": STORE_FORMAT})
            backend.write_atomic(CONFIG_KEY, json.dumps(config).encode())
            return cls(backend, quarantine, config)
        raise StoreError(
            f"no modelgit store at {location}; create one with `modelgit add` "
            "(which creates the default store) or pass --store to point at an existing one")

    @property
    def newest_whole(self) -> bool:
        """Whether this store is kept newest whole (a remote's, written by push)."""
        return self.config.get("layout") == NEWEST_WHOLE

    @property
    def legacy_heads(self) -> bool:
        """Whether the store held objects before it was kept newest whole: a standalone object
        without a ``below`` hint may then have deltas against it that no header counts."""
        return bool(self.config.get("legacy_heads"))

    def use_newest_whole(self) -> None:
        """Mark the store as kept newest whole (format 2), before the first object is
        re-encoded against a newer one; a no-op when it already is.

        A modelgit that only knows format 1 then refuses the store ("upgrade modelgit"): it
        would trust header depths, which re-encoding makes stale.
        """
        if self.newest_whole:
            return
        legacy = next(iter(self.backend.list("objects")), None) is not None
        config = dict(self.config, format=max(NEWEST_WHOLE_FORMAT, self.config.get("format", 1)),
                      layout=NEWEST_WHOLE)
        if legacy:
            config["legacy_heads"] = True
        self.backend.write_atomic(CONFIG_KEY, json.dumps(config).encode())
        self.config = config

    @property
    def holds_delta16(self) -> bool:
        """Whether the store may hold delta16 objects (format 3, see :mod:`.half_codec`)."""
        return bool(self.config.get("delta16"))

    def use_delta16(self) -> None:
        """Mark the store as holding delta16 objects (format 3) before the first is written; a
        no-op when it is. A modelgit that does not know the encoding then refuses the store
        ("upgrade modelgit") instead of taking such an object for a damaged one."""
        self._mark_format("delta16", DELTA16_FORMAT)

    @property
    def holds_derived(self) -> bool:
        """Whether the store may hold derived objects (format 3, see :mod:`.derived`)."""
        return bool(self.config.get("derived"))

    def use_derived(self) -> None:
        """Mark the store as holding derived objects (format 3) before the first is written; a
        no-op when it is. A modelgit that does not know them then refuses the store ("upgrade
        modelgit") instead of taking a derived object for a damaged one."""
        self._mark_format("derived", DERIVED_FORMAT)

    def _mark_format(self, flag: str, version: int) -> None:
        if self.config.get(flag):
            return
        config = dict(self.config, format=max(version, self.config.get("format", 1)), **{flag: True})
        self.backend.write_atomic(CONFIG_KEY, json.dumps(config).encode())
        self.config = config

    @property
    def url(self) -> str:
        return self.backend.url

    @contextlib.contextmanager
    def writing(self):
        """Hold the store lock shared while adding (re-entrant, shared by a process's threads)."""
        with self._writers_guard:
            if self._writers == 0:
                self._lock_cm = self.backend.lock(shared=True)
                self._lock_cm.__enter__()
            self._writers += 1
        try:
            yield self
        finally:
            with self._writers_guard:
                self._writers -= 1
                if self._writers == 0:
                    try:
                        self.flush()
                    finally:
                        self._lock_cm.__exit__(None, None, None)
                        self._lock_cm = None

    def flush(self) -> None:
        """Make every object written so far durable and visible (and fsync directories)."""
        if hasattr(self.backend, "commit_staged"):
            self.backend.commit_staged()
        self.backend.sync_dirs()

    # ---------------------------------------------------------------- objects
    @staticmethod
    def _key(oid: str) -> str:
        return f"objects/{oid[:2]}/{oid[2:]}"

    def has(self, oid: str) -> bool:
        return self.backend.exists(self._key(oid))

    def freshen(self, oid: str) -> bool:
        """Whether ``oid`` is present; if so, mark it as just written (its mtime, locally).

        A writer that finds an object already there and relies on it (dedup, the stat cache)
        freshens it, so that :meth:`gc`'s grace period protects it like a new object until the
        writer's result is referenced (git writes its index only after the filter returns).
        """
        return self.backend.touch(self._key(oid))

    def put(self, dtype: str, shape: tuple[int, ...], data, parent: str | None = None,
            oid: str | None = None, parent_loaded: tuple | None = None) -> PutResult:
        """Store content ``data`` (raw little-endian bytes of ``dtype`` and ``shape``).

        ``data`` is hashed, then encoded: it must not change meanwhile (a buffer of this
        process, not a mapping of a file that another process may write).

        Args:
            parent: id of an object this content probably resembles (the same tensor in the
                previous version); a delta against it is stored when it pays.
            oid: the id, when the caller already computed it.
            parent_loaded: what ``_load(parent, with_size=True)`` returned, when the caller
                has just loaded (and verified) the parent: it is not decoded again.
        """
        nbytes = memoryview(data).nbytes
        if nbytes != prod(shape) * DTYPES[dtype].itemsize or nbytes > MAX_OBJECT_BYTES:
            raise StoreError(f"cannot store {nbytes} bytes as {dtype} {list(shape)}: the size does "
                             f"not match, or is over {MAX_OBJECT_BYTES} bytes (a modelgit bug: "
                             "objects are chunks of tensors)")
        oid = oid or object_id(dtype, shape, data)
        if self.freshen(oid):
            return PutResult(oid, False, 0, None)
        itemsize = DTYPES[dtype].itemsize
        encoding, payload = None, None
        depth, delta_parent = 0, None
        candidate = self._delta_candidate(parent, oid, dtype, len(data), parent_loaded)
        if candidate is not None:
            _parent_header, parent_raw, _, parent_depth = candidate
            found = encode_best_delta(data, dtype, itemsize, parent_raw)
            if found is not None:
                encoding, payload = found
                depth, delta_parent = parent_depth + 1, parent
        if payload is None or not self._delta_clearly_pays(len(payload), len(data), candidate):
            standalone, standalone_payload = encode_standalone(data, itemsize, dtype in FLOAT_DTYPES)
            if payload is None or len(payload) >= DELTA_ADVANTAGE * len(standalone_payload):
                encoding, payload, depth, delta_parent = standalone, standalone_payload, 0, None
        if encoding is DELTA16:
            self.use_delta16()
        head = pack_header(encoding, depth, dtype, tuple(shape), len(data), delta_parent,
                           sum_of_squares(data, dtype))
        if self._writers and hasattr(self.backend, "stage"):
            # made durable and visible in batches; header and payload written one after the other
            # (joining them would copy the payload once more)
            self.backend.stage(self._key(oid), head, payload)
        else:
            self.backend.write_atomic(self._key(oid), head + payload)
        return PutResult(oid, True, len(head) + len(payload), encoding.name)

    def _delta_clearly_pays(self, delta_len: int, raw_len: int, candidate) -> bool:
        """Whether a delta wins without computing the standalone encoding to compare with.

        It does when it halves the raw size (weights never compress that well on their own), or
        when it beats the parent's own standalone size by the required margin: the parent is the
        same tensor a version ago, so its encoded size predicts this one's.
        """
        if delta_len <= raw_len // 2:
            return True
        header, _raw, stored, _depth = candidate
        return header.parent is None and delta_len < DELTA_ADVANTAGE * stored

    def _delta_candidate(self, parent, oid, dtype, raw_len, loaded=None):
        """(header, content, payload size, chain depth) of ``parent`` when a delta against it is
        allowed. The depth is that of the chain as decoded, not the header's: the headers of a
        remote's store kept newest-whole understate it (an object re-encoded against a newer
        one adds a link under every delta that decodes through it)."""
        if not parent or parent == oid or not self.has(parent):
            return None
        if loaded is None and self.header(parent).encoding is DERIVED:
            return None  # a delta never decodes through a computation (see .derived)
        header, raw, stored, depth = loaded or self._load(parent, with_size=True)
        if header.dtype != dtype or header.raw_len != raw_len or depth >= MAX_DELTA_DEPTH \
                or header.encoding is DERIVED:
            return None
        return header, raw, stored, depth

    def put_blob(self, data: bytes) -> str:
        """Store a small byte string (a manifest, a file header) and return its id."""
        return self.put("U8", (len(data),), data).oid

    def _read(self, oid: str) -> bytes:
        if not is_object_id(oid):
            raise UsageError(f"{oid!r} is not an object id (64 lowercase hex digits)")
        try:
            return self.backend.read(self._key(oid))
        except FileNotFoundError:
            raise ObjectMissingError(
                f"object {oid} is missing from the store at {self.url}; fetch it from the "
                "remote that has it, or re-add the checkpoint that contained it", oid
            ) from None

    def header(self, oid: str, quarantine: bool = True) -> ObjectHeader:
        """The parsed header of ``oid`` (read from the first bytes only when possible).

        Args:
            quarantine: move the object aside when its header is damaged (if the store does).
        """
        read_head = getattr(self.backend, "read_head", None)
        if read_head is not None and is_object_id(oid):
            try:
                return unpack_header(read_head(self._key(oid), 4096))
            except FileNotFoundError:
                self._read(oid)  # raises the missing-object error
            except ValueError:
                pass  # a header longer than 4 KiB, or damage: parse the whole object below
        blob = self._read(oid)
        try:
            return unpack_header(blob)
        except ValueError as exc:
            raise self._corrupt(oid, str(exc), blob if quarantine else None) from None

    def _corrupt(self, oid: str, why: str, blob=None) -> CorruptObjectError:
        """The error for a damaged ``oid``; moves it to quarantine when ``blob`` (the bytes
        found damaged) is given and the store quarantines."""
        moved = blob is not None and self.quarantine and self._quarantine(oid, blob)
        if moved:
            return CorruptObjectError(
                f"object {oid} in the store at {self.url} is corrupt ({why}); it was moved to "
                f"{QUARANTINE}/{oid} so that a good copy can take its place: fetch it again "
                "(`modelgit fetch`, or `modelgit checkout` in a repository) or re-add the "
                "checkpoint that contains it (`modelgit verify` lists every damaged object)",
                oid, quarantined=True, reason=why)
        return CorruptObjectError(
            f"object {oid} in the store at {self.url} is corrupt ({why}); delete "
            f"{self._key(oid)} and re-add or re-fetch the checkpoint that contains it "
            "(`modelgit verify` lists every damaged object)", oid, reason=why)

    def _quarantine(self, oid: str, blob) -> bool:
        """Move ``oid`` to ``quarantine/<id>`` if it still holds the damaged bytes ``blob``.

        Objects are replaced only by rename, so a good copy written meanwhile (a concurrent
        fetch) is a different file: when the file moved is not the one found damaged, it is
        put back.
        """
        key, aside = self._key(oid), f"{QUARANTINE}/{oid}"
        try:
            self.backend.move(key, aside)
        except (OSError, StoreError):
            return False  # gone already (another reader moved it), or the store is read-only
        try:
            same = self.backend.read(aside) == bytes(blob)
        except OSError:
            return False
        if not same:
            with contextlib.suppress(OSError, StoreError):
                self.backend.move(aside, key, replace=False)
            return False
        return True

    def get(self, oid: str) -> bytes:
        """Return the decoded content of ``oid``, verified against its id.

        Raises:
            ObjectMissingError: the object (or a delta ancestor) is not in the store.
            CorruptObjectError: it does not decode to content with its id.
        """
        raw = self._load(oid)[1]
        return raw if isinstance(raw, bytes) else bytes(raw)

    def get_buffer(self, oid: str, known: dict | None = None):
        """Like :meth:`get`, but may return any bytes-like (a uint8 array) to save a copy.

        Args:
            known: already decoded objects ``{oid: content}``; a delta ancestor among them is
                not decoded again.
        """
        return self._load(oid, known=known)[1]

    def _load(self, oid: str, _depth: int = 0, with_size: bool = False, verify: bool = True,
              known: dict | None = None):
        """(header, content) of ``oid``, verified; with ``with_size`` also the payload size and
        the depth of its delta chain as decoded here.

        Delta ancestors are decoded without hashing each: the id check of ``oid`` itself covers
        the result. Only when it fails is the chain checked link by link, to name (and
        quarantine) the object that is damaged rather than its descendant.
        """
        blob = self._read(oid)
        try:
            head = _parse(blob)
        except ValueError as exc:
            raise self._corrupt(oid, str(exc), blob) from None
        if head.encoding is DERIVED:
            return self._load_derived(oid, head, blob, with_size)
        parent_raw, depth = None, 0
        if head.parent is not None:
            if _depth >= MAX_DELTA_DEPTH:  # some header of the chain lies about its depth
                raise self._corrupt(oid, "delta chain deeper than allowed")
            if known and head.parent in known:
                parent_raw, depth = known[head.parent], head.depth
            else:
                loaded = self._load(head.parent, _depth + 1, True, verify=False, known=known)
                parent_raw, depth = loaded[1], loaded[3] + 1
        try:
            raw = _decode_payload(head, blob, parent_raw)
            if verify and object_id(head.dtype, head.shape, raw) != oid:
                raise ValueError("content hash does not match its id")
        except ValueError as exc:
            if head.parent is not None and not (known and head.parent in known):
                self._load(head.parent, _depth + 1)  # raises for a damaged ancestor
            raise self._corrupt(oid, str(exc), blob) from None
        if with_size:
            return head, raw, len(blob) - head.payload_offset, depth
        return head, raw

    def iter_objects(self) -> Iterator[str]:
        for key in self.backend.list("objects"):
            parts = key.split("/")
            if len(parts) == 3 and is_object_id(parts[1] + parts[2]):
                yield parts[1] + parts[2]

    def stored_size(self, oid: str) -> int:
        return self.backend.size(self._key(oid))

    # ---------------------------------------------------------------- refs
    def set_ref(self, name: str, oid: str, note: str = "") -> None:
        """Point ref ``name`` at manifest ``oid``, recording the move in the ref's history
        (see :mod:`modelgit.store.refs`: gc keeps every manifest a history names)."""
        _check_ref_name(name)
        self.flush()  # a ref must never point at objects that are not durable yet
        try:
            old = self.backend.read(f"refs/{name}").decode().strip()
            old_since = self.backend.mtime(f"refs/{name}")
        except FileNotFoundError:
            old, old_since = None, None
        refs_history.record(self.backend, name, old if is_object_id(old or "") else None, oid,
                            note, old_since)
        self.backend.write_atomic(f"refs/{name}", (oid + "\n").encode())

    def get_ref(self, name: str) -> str:
        _check_ref_name(name)
        try:
            return self.backend.read(f"refs/{name}").decode().strip()
        except FileNotFoundError:
            raise UsageError(f"no ref {name!r} in the store at {self.url}; "
                             "`modelgit refs` lists them") from None

    def has_ref(self, name: str) -> bool:
        """Whether ``name`` is a valid ref name and a ref of that name exists."""
        try:
            _check_ref_name(name)
        except UsageError:
            return False
        return self.backend.exists(f"refs/{name}")

    def delete_ref(self, name: str) -> None:
        """Delete ref ``name`` and its history (what only it kept is then garbage for gc)."""
        _check_ref_name(name)
        if not self.backend.exists(f"refs/{name}"):
            raise UsageError(f"no ref {name!r} in the store at {self.url}; "
                             "`modelgit refs` lists them")
        self.backend.delete(f"refs/{name}")
        refs_history.delete_history(self.backend, name)

    def refs(self) -> dict[str, str]:
        out = {}
        for key in self.backend.list("refs"):
            out[key[len("refs/"):]] = self.backend.read(key).decode().strip()
        return dict(sorted(out.items()))

    def ref_history(self, name: str) -> list[refs_history.RefEntry]:
        """The manifests ref ``name`` has pointed at, newest (the current one) first."""
        _check_ref_name(name)
        return refs_history.history(self.backend, name)

    def expire_ref_history(self, name: str, older_than_seconds: float) -> int:
        """Forget the entries of ref ``name``'s history older than ``older_than_seconds`` (never
        the current one); ``gc`` may then delete what only they kept. Returns how many."""
        current = self.get_ref(name)
        cutoff = time.time_ns() - int(older_than_seconds * 1e9)
        return refs_history.expire(self.backend, name, current, cutoff)

    def object_ids_with_prefix(self, prefix: str, limit: int = 20) -> list[str]:
        """Ids of the objects present whose id starts with ``prefix`` (at least 2 hex digits)."""
        prefix = prefix.lower()
        found = []
        for key in self.backend.list(f"objects/{prefix[:2]}"):
            parts = key.split("/")
            if len(parts) == 3 and (parts[1] + parts[2]).startswith(prefix) \
                    and is_object_id(parts[1] + parts[2]):
                found.append(parts[1] + parts[2])
                if len(found) >= limit:
                    break
        return sorted(found)

    # ---------------------------------------------------------------- maintenance
    def stats(self) -> StoreStats:
        stats = StoreStats(refs=len(self.refs()))
        for oid in self.iter_objects():
            size = self.stored_size(oid)
            try:
                head = self.header(oid, quarantine=False)
                name, raw_len = head.encoding.name, head.raw_len
            except CorruptObjectError:
                name, raw_len = "corrupt", 0
            stats.objects += 1
            stats.stored_bytes += size
            stats.content_bytes += raw_len
            entry = stats.by_encoding.setdefault(name, {"objects": 0, "stored_bytes": 0,
                                                        "content_bytes": 0})
            entry["objects"] += 1
            entry["stored_bytes"] += size
            entry["content_bytes"] += raw_len
        return stats

    def verify(self, oids: Iterable[str] | None = None) -> list[str]:
        """Decode and hash-check objects (all by default); return one message per problem.

        A damaged object is moved to quarantine (when the store quarantines), so that fetching
        or adding it again writes a good copy.
        """
        problems, reported = [], set()
        for oid in (self.iter_objects() if oids is None else oids):
            try:
                self.get(oid)
            except (CorruptObjectError, ObjectMissingError) as exc:
                problems.append(str(exc))
                reported.add(exc.oid)
        if oids is None:  # damaged objects moved aside earlier and not replaced since
            for key in self.backend.list(QUARANTINE):
                oid = key.rsplit("/", 1)[-1]
                if is_object_id(oid) and oid not in reported and not self.has(oid):
                    problems.append(
                        f"object {oid} was found damaged in the store at {self.url} and is in "
                        f"{QUARANTINE}/{oid}; fetch it again (`modelgit fetch`) or re-add the "
                        "checkpoint that contains it (`modelgit gc` clears the quarantine)")
        return problems

    def gc(self, live: set[str] | Callable[[], set[str]], dry_run: bool = False,
           grace_seconds: float = 0.0) -> GcResult:
        """Delete every object not in ``live``, not younger than ``grace_seconds`` and not a
        delta ancestor of one of those; clear stale temporary files and quarantined (damaged)
        objects.

        ``live`` is best a callable: it is then evaluated under the exclusive lock, after every
        running add has finished, so the roots it reads (refs, git history) include their
        results. Delta parents are added here since only the store knows them. An object written
        (or freshened, see :meth:`freshen`) within the last ``grace_seconds`` is kept whatever
        the roots say: a writer that does not hold the store lock until its result is referenced
        (git commits a manifest after its filter returned) may still need it.
        """
        with self.backend.lock(shared=False):
            if callable(live):
                live = live()
            present = set(self.iter_objects())
            young = set()
            if grace_seconds > 0:
                cutoff = time.time() - grace_seconds
                for oid in present - set(live):
                    with contextlib.suppress(FileNotFoundError):
                        if self.backend.mtime(self._key(oid)) >= cutoff:
                            young.add(oid)
            keep = set()
            todo = [oid for oid in set(live) | young if oid in present]
            while todo:
                oid = todo.pop()
                if oid in keep:
                    continue
                keep.add(oid)
                with contextlib.suppress(CorruptObjectError, ObjectMissingError):
                    head = self.header(oid, quarantine=False)
                    if head.parent and head.parent in present:
                        todo.append(head.parent)
                    # a derived object needs its inputs (see .derived)
                    todo += [i for i in self.derived_inputs(oid, head) if i in present]
            removed = freed = 0
            for oid in sorted(present - keep):
                removed += 1
                freed += self.stored_size(oid)
                if not dry_run:
                    self.backend.delete(self._key(oid))
            removed_tmp = 0
            now = time.time()
            for key in list(self.backend.list("tmp")):
                # under the exclusive lock no local writer is active, so any temp is debris;
                # remote stores keep recent temps, which may belong to a running push
                if isinstance(self.backend, LocalBackend) or now - self.backend.mtime(key) > _STALE_TMP_SECONDS:
                    removed_tmp += 1
                    if not dry_run:
                        self.backend.delete(key)
            quarantined = list(self.backend.list(QUARANTINE))
            if not dry_run:
                for key in quarantined:
                    self.backend.delete(key)
                self.drop_derived_cache(keep)
            return GcResult(len(keep), removed, freed, removed_tmp, len(young - set(live)),
                            len(quarantined))


def _check_ref_name(name: str) -> None:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or p.startswith(".") for p in parts) or "\\" in name \
            or any(ord(c) < 32 for c in name):
        raise UsageError(f"invalid ref name {name!r}: use letters, digits, '-', '_', '.' and '/'")
