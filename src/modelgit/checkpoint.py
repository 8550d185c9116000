"""Checkpoints in a store: add a file or directory, materialise a manifest back, maintain.

This is the library behind ``modelgit add``, ``materialize``, ``stats``, ``verify`` and ``gc``.
Everything streams chunk by chunk through a bounded thread pool, so peak memory is a few chunks
plus the largest tensor a format forces into memory (torch pickles), never the checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import time
from dataclasses import dataclass
from typing import Iterator

import blake3

from .dtypes import DTYPES
from .errors import FormatError, ManifestError, ModelgitError, StoreError, StoreFullError, UsageError
from .formats import TensorEntry, detect_format, get_format
from .formats._sniff import _SUFFIXES as TORCH_SUFFIXES
from .formats.safetensors_format import parse_header, read_header_from_stream, release_mapped
from .manifest import FileRecord, Manifest, TensorRecord
from ._files import WRITE_PIECE, reserve_space, sync_path, write_all
from ._outputs import (check_output, install_directory, install_file, remove, remove_stale_temporaries,
                       scratch_directory, temporary_path)
from .progress import progress_bar
from .store import CHUNK_BYTES, LocalBackend, Store, chunk_layout
from ._parallel import ordered_map

__all__ = ["add", "add_stream", "iter_file_bytes", "cached_record", "remember_record", "materialize", "load_manifest", "StoreReport", "store_report", "verify",
           "collect_garbage", "SKIP_DIRS"]

SKIP_DIRS = {".git", ".modelgit", "__pycache__"}
BLOB_FORMAT = "blob"
# mtimes closer than this to the moment a stat-cache entry was written are not trusted: the file
# may have changed again within the filesystem's timestamp granularity (git's "racy" problem)
RACY_NS = 100_000_000


# ---------------------------------------------------------------------------- adding
@dataclass(frozen=True)
class _Job:
    dtype: str
    shape: tuple[int, ...]
    data: object  # a bytes-like slice of the file
    parent: str | None
    release: object = None  # called once the chunk is stored: drops its mapped pages


def _put(store: Store, job: _Job) -> tuple[str, int]:
    result = store.put(job.dtype, job.shape, job.data, parent=job.parent)
    if job.release is not None:
        job.release()
    return result.oid, len(job.data)


def _list_files(path: str) -> list[tuple[str, str]]:
    """(relative path, absolute path) of every file under a directory, sorted."""
    out = []
    for dirpath, dirs, files in os.walk(path, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            full = os.path.join(dirpath, name)
            out.append((os.path.relpath(full, path).replace(os.sep, "/"), full))
    return out


class _BlobReader:
    """A plain file seen as one U8 tensor named "" (mapped, pages released as they are stored)."""

    def __init__(self, path: str):
        self._handle = open(path, "rb")
        size = os.fstat(self._handle.fileno()).st_size
        self._map = mmap.mmap(self._handle.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self.entry = TensorEntry("", "U8", (size,))

    def data(self, name: str = ""):
        return memoryview(self._map) if self._map is not None else b""

    def release(self, name: str, start: int, stop: int) -> None:
        if self._map is not None:
            release_mapped(self._map, start, stop)

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
        self._handle.close()


def _stat_key(path: str) -> str:
    return "cache/stat/" + blake3.blake3(os.path.abspath(path).encode()).hexdigest()[:40]


def _stat_tuple(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev]


def cached_record(store: Store, full: str, rel: str) -> FileRecord | None:
    """The record of an unchanged file from the stat cache, when all its objects are present."""
    if not isinstance(store.backend, LocalBackend):
        return None
    try:
        entry = json.loads(store.backend.read(_stat_key(full)))
        if entry["path"] != os.path.abspath(full) or entry["stat"] != _stat_tuple(os.stat(full)):
            return None
        if entry["cached_at_ns"] - entry["stat"][1] < RACY_NS:
            return None
        record = Manifest.loads(store.get(entry["manifest"])).files[0]
    except (OSError, ValueError, KeyError, ModelgitError):
        return None
    manifest = Manifest((record,))
    if not all(store.has(oid) for oid in manifest.object_ids()):
        return None
    return FileRecord(rel, record.format, record.options, record.tensors)


def remember_record(store: Store, full: str, st: os.stat_result, record: FileRecord) -> None:
    if not isinstance(store.backend, LocalBackend):
        return
    manifest_id = store.put_blob(Manifest((record,)).dumps())
    entry = {"path": os.path.abspath(full), "stat": _stat_tuple(st),
             "cached_at_ns": time.time_ns(), "manifest": manifest_id}
    with contextlib.suppress(StoreError):  # the cache is an optimisation only
        store.backend.write_atomic(_stat_key(full), json.dumps(entry).encode())


def _tensor_jobs(entry: TensorEntry, data, parent: TensorRecord | None, reader=None) -> Iterator[_Job]:
    itemsize = DTYPES[entry.dtype].itemsize
    parent_chunks = parent.chunks if parent is not None and parent.dtype == entry.dtype else ()
    release = getattr(reader, "release", None)
    for index, chunk in enumerate(chunk_layout(itemsize, entry.shape)):
        drop = (lambda c=chunk: release(entry.name, c.start, c.stop)) if release else None
        yield _Job(entry.dtype, chunk.shape, data[chunk.start:chunk.stop],
                   parent_chunks[index] if index < len(parent_chunks) else None, drop)


def _add_file(store: Store, full: str, rel: str, parent: FileRecord | None, bar,
              use_cache: bool = True) -> FileRecord:
    st = os.stat(full)
    cached = cached_record(store, full, rel) if use_cache else None
    if cached is not None:
        bar.update(st.st_size)
        return cached
    fmt = detect_format(full)
    parents = {t.name: t for t in parent.tensors} if parent is not None else {}
    if fmt is None:
        blob = _BlobReader(full)
        try:
            jobs = list(_tensor_jobs(blob.entry, blob.data(), parents.get(""), blob))
            chunk_ids = _run_jobs(store, jobs, bar)
            del jobs
        finally:
            blob.close()
        record = FileRecord(rel, BLOB_FORMAT, {}, (TensorRecord("", "U8", blob.entry.shape, tuple(chunk_ids)),))
    else:
        reader = fmt.open(full)
        try:
            options = {key: store.put_blob(value) for key, value in reader.meta().items()}
            entries = reader.entries()
            jobs, counts = [], []
            for entry in entries:
                tensor_jobs = list(_tensor_jobs(entry, reader.data(entry.name), parents.get(entry.name), reader))
                jobs.extend(tensor_jobs)
                counts.append(len(tensor_jobs))
            chunk_ids = _run_jobs(store, jobs, bar)
            del jobs
            tensors, position = [], 0
            for entry, count in zip(entries, counts):
                tensors.append(TensorRecord(entry.name, entry.dtype, entry.shape,
                                            tuple(chunk_ids[position:position + count])))
                position += count
        finally:
            reader.close()
        record = FileRecord(rel, fmt.name, options, tuple(tensors))
    if use_cache:
        remember_record(store, full, st, record)
    return record


def _run_jobs(store: Store, jobs: list[_Job], bar) -> list[str]:
    ids = []
    for oid, size in ordered_map(lambda job: _put(store, job), jobs):
        ids.append(oid)
        bar.update(size)
    return ids


def add(store: Store, path: str, parent: Manifest | None = None, ref: str | None = None,
        progress: bool | None = None) -> Manifest:
    """Add a checkpoint file or directory to ``store`` and return its manifest.

    Args:
        store: the store to write to.
        path: a safetensors / torch / npz file, any other file (stored as a blob), or a
            directory (a sharded Hugging Face model, a PEFT adapter...).
        parent: the manifest of the previous version; each chunk is stored as a delta against
            the same chunk of the parent when that pays.
        ref: name a ref in the store after this manifest (a root for ``gc``).
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        FormatError: a file is malformed or unsafe (named in the message).
        StoreFullError: the disk filled up; nothing half-written was kept.
    """
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    is_dir = os.path.isdir(path)
    files = _list_files(path) if is_dir else [(os.path.basename(path), path)]
    parent_files = {f.path: f for f in parent.files} if parent is not None else {}
    if not is_dir and parent is not None and len(parent.files) == 1:
        parent_files = {files[0][0]: parent.files[0]}
    total = sum(os.path.getsize(full) for _, full in files)
    records = []
    with store.writing(), progress_bar(total, f"add {os.path.basename(path)}", progress) as bar:
        for rel, full in files:
            records.append(_add_file(store, full, rel, parent_files.get(rel), bar))
        manifest = Manifest(tuple(records), "dir" if is_dir else "file")
        manifest_id = store.put_blob(manifest.dumps())
        if ref:
            store.set_ref(ref, manifest_id)
    return manifest


def _read_exact(stream, n: int, where: str):
    """The next ``n`` bytes of ``stream`` (a bytes-like)."""
    readinto_exact = getattr(stream, "readinto_exact", None)
    if readinto_exact is not None:  # git's pipe: into a buffer that is not zeroed first
        import numpy

        buffer = memoryview(numpy.empty(n, dtype=numpy.uint8))
        got = readinto_exact(buffer)
        data = buffer[:got]
    else:
        data = stream.read(n)
    if len(data) != n:
        raise FormatError(f"{where}: data ends after {len(data)} of {n} bytes of a tensor (truncated?)")
    return data


def _stream_jobs(stream, entries, parents: dict[str, TensorRecord], where: str) -> Iterator[_Job]:
    for entry in entries:
        parent = parents.get(entry.name)
        parent_chunks = parent.chunks if parent is not None and parent.dtype == entry.dtype else ()
        for index, chunk in enumerate(chunk_layout(DTYPES[entry.dtype].itemsize, entry.shape)):
            data = _read_exact(stream, chunk.stop - chunk.start, where)
            yield _Job(entry.dtype, chunk.shape, data,
                       parent_chunks[index] if index < len(parent_chunks) else None)


def _stream_blob_jobs(stream, parent: TensorRecord | None, sizes: list[int]) -> Iterator[_Job]:
    parent_chunks = parent.chunks if parent is not None else ()
    index = 0
    while True:
        data = stream.read(CHUNK_BYTES)
        if not data and index > 0:
            return
        sizes.append(len(data))
        yield _Job("U8", (len(data),), data, parent_chunks[index] if index < len(parent_chunks) else None)
        index += 1
        if len(data) < CHUNK_BYTES:
            return


def add_stream(store: Store, stream, name: str, parent: FileRecord | None = None,
               progress: bool | None = None) -> Manifest:
    """Add one file whose bytes come from ``stream`` (anything with ``read(n)``).

    Safetensors data (by ``name``) and plain blobs are consumed front to back, chunk by chunk,
    without a temporary file; other formats are spooled to a temporary file first. This is what
    git's clean filter uses.

    Raises:
        FormatError: the data is malformed (truncated, trailing bytes, bad header).
    """
    parents = {t.name: t for t in parent.tensors} if parent is not None else {}
    base = os.path.basename(name)
    with store.writing(), progress_bar(0, f"add {base}", progress) as bar:
        fmt = detect_format(name) if name.endswith(".safetensors") else None
        if fmt is None and _spooled_format(name) is None:
            sizes: list[int] = []
            jobs = _stream_blob_jobs(stream, parents.get(""), sizes)
            ids = _run_jobs(store, jobs, bar)
            record = FileRecord(base, BLOB_FORMAT, {}, (TensorRecord("", "U8", (sum(sizes),), tuple(ids)),))
        elif fmt is not None:
            header, items = read_header_from_stream(stream, name)
            entries = [entry for entry, _, _ in items]
            ids = _run_jobs(store, _stream_jobs(stream, entries, parents, name), bar)
            if stream.read(1):
                raise FormatError(f"{name}: data continues after the last tensor; the header does "
                                  "not describe the whole file (corrupt?)")
            tensors, position = [], 0
            for entry in entries:
                count = len(chunk_layout(DTYPES[entry.dtype].itemsize, entry.shape))
                tensors.append(TensorRecord(entry.name, entry.dtype, entry.shape,
                                            tuple(ids[position:position + count])))
                position += count
            record = FileRecord(base, fmt.name, {"header": store.put_blob(header)}, tuple(tensors))
        else:
            with scratch_directory("modelgit-spool") as tmp:
                path = os.path.join(tmp, base)
                with open(path, "wb") as out:
                    while block := stream.read(1 << 20):
                        out.write(block)
                record = _add_file(store, path, base, parent, bar, use_cache=False)
        manifest = Manifest((record,), "file")
        store.put_blob(manifest.dumps())
    return manifest


def _spooled_format(name: str):
    """The format of a file name that must be spooled to disk to be parsed (torch, npz)."""
    lowered = name.lower()
    if lowered.endswith(TORCH_SUFFIXES):
        return "torch"
    if lowered.endswith(".npz"):
        return "npz"
    return None


# ---------------------------------------------------------------------------- materialising
def load_manifest(store: Store | None, spec: str) -> Manifest:
    """A manifest from a file path, a ref name or a manifest object id."""
    if os.path.isfile(spec):
        with open(spec, "rb") as handle:
            return Manifest.loads(handle.read(), spec)
    if store is None:
        raise UsageError(f"{spec}: no such manifest file")
    if len(spec) == 64 and store.has(spec):
        return Manifest.loads(store.get(spec), spec)
    return Manifest.loads(store.get(store.get_ref(spec)), f"ref {spec}")


def _write_order(record: FileRecord, meta: dict[str, bytes]) -> list[TensorEntry]:
    entries = [TensorEntry(t.name, t.dtype, t.shape) for t in record.tensors]
    if record.format == "safetensors" and "header" in meta:
        total = sum(e.nbytes for e in entries)
        order = {entry.name: i for i, (entry, _, _) in enumerate(parse_header(meta["header"], total, record.path))}
        entries.sort(key=lambda e: order.get(e.name, len(order)))
    return entries


def iter_file_bytes(store: Store, record: FileRecord, bar=None) -> Iterator[bytes]:
    """The bytes of one file of a manifest, front to back, every chunk verified.

    Safetensors and blobs stream chunk by chunk, decoded ahead on a thread pool; formats that
    cannot be produced front to back (torch, npz) are written to a temporary file first.
    """
    meta = {key: store.get(oid) for key, oid in record.options.items()}
    entries = _write_order(record, meta)
    by_name = {t.name: t for t in record.tensors}
    stream = ordered_map(store.get_buffer, [oid for e in entries for oid in by_name[e.name].chunks])

    def read(entry: TensorEntry) -> Iterator[bytes]:
        for _ in by_name[entry.name].chunks:
            data = next(stream)
            if bar is not None:
                bar.update(len(data))
            yield data

    if record.format == BLOB_FORMAT:
        for entry in entries:
            yield from read(entry)
        return
    fmt = get_format(record.format)
    if fmt.stream is not None:
        yield from fmt.stream(meta, entries, read, record.path)
        return
    with scratch_directory("modelgit-write") as tmp:
        path = os.path.join(tmp, os.path.basename(record.path) or "file")
        fmt.write(path, meta, entries, read)
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                yield block


class _UnexpectedChunking(Exception):
    """A manifest's chunks are not cut the way this version cuts tensors (an older manifest)."""


def _placed_chunks(store: Store, record: FileRecord) -> tuple[bytes, list[tuple[str, int, int]]] | None:
    """(prefix, [(chunk id, file offset, size)]) of a file made of a prefix and whole tensors,
    or None for other formats and for chunks this version does not cut that way."""
    meta = {key: store.get(oid) for key, oid in record.options.items()}
    entries = _write_order(record, meta)
    if record.format == BLOB_FORMAT:
        prefix, placed, offset = b"", [], 0
        for entry in entries:
            placed.append((entry, offset))
            offset += entry.nbytes
    else:
        layout = get_format(record.format).layout
        if layout is None:
            return None
        prefix, placed = layout(meta, entries, record.path)
    by_name = {t.name: t for t in record.tensors}
    jobs = []
    for entry, start in placed:
        chunks = chunk_layout(DTYPES[entry.dtype].itemsize, entry.shape)
        ids = by_name[entry.name].chunks
        if len(chunks) != len(ids):
            return None
        jobs.extend((oid, start + c.start, c.stop - c.start) for oid, c in zip(ids, chunks))
    return prefix, jobs


def _write_in_place(store: Store, record: FileRecord, fd: int, bar) -> bool:
    """Write the file by decoding each chunk and writing it at its offset, on the worker
    threads: copying into fresh page-cache pages, which a VM can make as costly as decoding,
    then runs on every core instead of one. False (nothing to keep) when the file's layout is
    not a prefix and whole tensors, or its chunks are cut another way.
    """
    placed = _placed_chunks(store, record)
    if placed is None:
        return False
    prefix, jobs = placed

    def place(job: tuple[str, int, int]) -> int:
        oid, offset, size = job
        data = store.get_buffer(oid)
        if len(data) != size:
            raise _UnexpectedChunking(oid)
        write_all(fd, data, offset, WRITE_PIECE)
        return size

    write_all(fd, prefix, 0, WRITE_PIECE)
    try:
        for size in ordered_map(place, jobs):
            if bar is not None:
                bar.update(size)
    except _UnexpectedChunking:
        return False
    return True


# formats whose files hold every tensor's bytes as they are (an npz may be compressed)
_RAW_LAYOUT_FORMATS = ("safetensors", BLOB_FORMAT)


def _write_file(store: Store, record: FileRecord, out_path: str, bar, label: str,
                sync: bool = True) -> None:
    try:
        with open(out_path, "wb") as out:
            if record.format in _RAW_LAYOUT_FORMATS:  # at least the tensors' bytes, whole
                reserve_space(out.fileno(), sum(t.nbytes for t in record.tensors))
            if not _write_in_place(store, record, out.fileno(), bar):
                out.seek(0)
                out.truncate(0)
                for piece in iter_file_bytes(store, record, bar):
                    write_all(out.fileno(), piece, piece_size=WRITE_PIECE)
            out.flush()
            if sync:
                os.fsync(out.fileno())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise StoreFullError(f"no space left writing {label} ({exc.strerror}); nothing was left "
                                 "behind. Free some space and run the command again") from None
        raise


def _safe_relpath(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        raise ManifestError(f"manifest names an unsafe path {path!r}; refusing to write outside "
                            "the destination")
    return os.path.join(*parts)


def materialize(store: Store, manifest: Manifest, dest: str, force: bool = False,
                progress: bool | None = None, sync: bool = True, mode: int | None = None) -> str:
    """Write the checkpoint of ``manifest`` to ``dest`` (a file, or a directory for ``root dir``).

    The result appears atomically: it is written under a temporary name next to ``dest``,
    fsynced (unless ``sync`` is false: a git work tree, which git does not fsync either) and
    renamed. Every chunk is verified against its id on the way. What killed runs left in that
    directory is removed first (see :mod:`modelgit._outputs`).

    Args:
        force: replace an existing ``dest`` (a regular file, or a whole directory for a
            directory manifest).
        mode: permission bits of the written file (a ``root file`` manifest only).

    Raises:
        UsageError: ``dest`` exists and ``force`` is false; or it is a link, a device, a FIFO,
            or a directory where the manifest is a file (or the reverse), replaced by nothing.
        ObjectMissingError / CorruptObjectError: an object is absent or damaged.
    """
    kind = "file" if manifest.root == "file" else "directory"
    state = check_output(dest, kind, force)
    if state == "empty" and not force:
        raise UsageError(f"{dest} already exists; pass --force to replace it")
    parent_dir = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent_dir, exist_ok=True)
    remove_stale_temporaries(parent_dir, os.path.basename(dest))
    tmp = temporary_path(dest)
    try:
        with progress_bar(manifest.logical_bytes, f"materialize {os.path.basename(dest)}", progress) as bar:
            if manifest.root == "file":
                _write_file(store, manifest.files[0], tmp, bar, dest, sync)
                if mode is not None:
                    os.chmod(tmp, mode)
            else:
                os.makedirs(tmp)
                for record in manifest.files:
                    target = os.path.join(tmp, _safe_relpath(record.path))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    _write_file(store, record, target, bar, os.path.join(dest, record.path), sync)
        if manifest.root == "file":
            install_file(tmp, dest)
        else:  # --force replaces the whole directory, as it replaces a whole file
            install_directory(tmp, dest, owned=lambda name: True)
    except BaseException:
        remove(tmp)
        raise
    if sync:
        sync_path(parent_dir)
    return dest


# ---------------------------------------------------------------------------- maintenance
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


def verify(store: Store, manifests: list[Manifest] | None = None) -> list[str]:
    """Check objects: all of them, or those the given manifests need (also reporting missing)."""
    if manifests is None:
        return store.verify()
    ids = sorted(set().union(*(m.object_ids() for m in manifests)))
    return store.verify(ids)


def collect_garbage(store: Store, keep: list[Manifest] = (), dry_run: bool = False,
                    extra_roots=None):
    """Remove objects that no ref (and no manifest in ``keep``) reaches. Returns a GcResult.

    ``extra_roots`` (a callable returning manifests, e.g. those of a git history) is called under
    the store's exclusive lock, like the refs are read, so an add finishing meanwhile is kept.
    """
    def live() -> set[str]:
        ids: set[str] = set()
        for name, oid in store.refs().items():
            ids.add(oid)
            ids |= Manifest.loads(store.get(oid), f"ref {name}").object_ids()
        for manifest in [*keep, *(extra_roots() if extra_roots else [])]:
            ids |= manifest.object_ids()
        return ids

    return store.gc(live, dry_run=dry_run)
