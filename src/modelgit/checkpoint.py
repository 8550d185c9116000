"""Checkpoints in a store: add a file or directory, materialise a manifest back, maintain.

This is the library behind ``modelgit add``, ``materialize``, ``stats``, ``verify`` and ``gc``.
Everything streams chunk by chunk through a bounded thread pool, so peak memory is a few chunks
plus the largest tensor a format forces into memory (torch pickles), never the checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import blake3

from .dtypes import DTYPES
from ._reading import ListedFile, SourceFile, check_regular, list_files
from .errors import (FileChangedError, FormatError, ManifestError, ModelgitError, StoreError,
                     StoreFullError, UsageError)
from .formats import TensorEntry, detect_format, get_format
from .formats._sniff import _SUFFIXES as TORCH_SUFFIXES
from .formats.safetensors_format import parse_header, read_header_from_stream
from .manifest import FileRecord, Manifest, TensorRecord
from ._files import WRITE_PIECE, reserve_space, sync_path, write_all
from ._outputs import (check_output, install_directory, install_file, remove, remove_stale_temporaries,
                       scratch_directory, temporary_path)
from .maintenance import GC_GRACE_SECONDS, StoreReport, collect_garbage, store_report, verify
from .progress import progress_bar
from .store import CHUNK_BYTES, LocalBackend, Store, chunk_layout
from ._parallel import ordered_map

__all__ = ["add", "add_stream", "default_ref", "GC_GRACE_SECONDS", "iter_file_bytes", "cached_record", "remember_record", "materialize", "load_manifest", "StoreReport", "store_report", "verify",
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
    parent: str | None
    data: object = None  # bytes already in this process's memory (from a stream, an npz member)
    read: Callable | None = None  # or: fills a buffer of ``nbytes`` with the bytes from the file
    nbytes: int = 0


class _Buffers:
    """Chunk buffers reused across the chunks of an add: a chunk is read into one, hashed,
    encoded and written from it, and the buffer goes back. Reusing them keeps the add from
    touching fresh pages for every chunk (costly on a VM) and bounds memory by the chunks in
    flight. Every chunk fits: chunks are at most ``CHUNK_BYTES``."""

    def __init__(self, size: int = CHUNK_BYTES):
        self._size = size
        self._free: list = []
        self._guard = threading.Lock()

    def take(self, nbytes: int):
        import numpy

        if nbytes > self._size:
            return numpy.empty(nbytes, dtype=numpy.uint8)
        with self._guard:
            if self._free:
                return self._free.pop()
        return numpy.empty(self._size, dtype=numpy.uint8)

    def give(self, buffer) -> None:
        if len(buffer) == self._size:
            with self._guard:
                self._free.append(buffer)


def _put(store: Store, job: _Job, buffers: _Buffers) -> tuple[str, int]:
    if job.read is None:
        return store.put(job.dtype, job.shape, job.data, parent=job.parent).oid, len(job.data)
    buffer = buffers.take(job.nbytes)
    try:
        # read, hashed, encoded and written from this one private buffer: the id is always the
        # hash of exactly the bytes stored, whatever happens to the file meanwhile
        view = memoryview(buffer)[:job.nbytes]
        job.read(view)
        return store.put(job.dtype, job.shape, view, parent=job.parent).oid, job.nbytes
    finally:
        buffers.give(buffer)


class _BlobReader:
    """A plain file seen as one U8 tensor named ""."""

    def __init__(self, source: SourceFile):
        self._source = source
        self.entry = TensorEntry("", "U8", (source.size,))

    def read_into(self, name: str, start: int, out) -> None:
        self._source.read_into(start, out)


def _stat_key(path: str) -> str:
    return "cache/stat/" + blake3.blake3(os.path.abspath(path).encode()).hexdigest()[:40]


def _stat_tuple(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev]


def cached_record(store: Store, full: str, rel: str, st: os.stat_result | None = None) -> FileRecord | None:
    """The record of an unchanged file from the stat cache, when all its objects are present
    (each is freshened, so a concurrent ``gc`` treats it as new: see :meth:`Store.freshen`).

    Args:
        st: the file's stat, when the caller has it open (else it is taken now).
    """
    if not isinstance(store.backend, LocalBackend):
        return None
    try:
        entry = json.loads(store.backend.read(_stat_key(full)))
        if entry["path"] != os.path.abspath(full) or entry["stat"] != _stat_tuple(st or os.stat(full)):
            return None
        if entry["cached_at_ns"] - entry["stat"][1] < RACY_NS:
            return None
        record = Manifest.loads(store.get(entry["manifest"]), f"stat cache of {full}").files[0]
    except (OSError, ValueError, KeyError, ModelgitError):
        return None
    manifest = Manifest((record,))
    if not all(store.freshen(oid) for oid in manifest.object_ids()):
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


def _tensor_jobs(entry: TensorEntry, parent: TensorRecord | None, reader) -> Iterator[_Job]:
    """The chunks of one tensor: read from the file by the worker that stores each (readers
    with ``read_into``), or sliced from the tensor's bytes, read now (npz, legacy torch)."""
    itemsize = DTYPES[entry.dtype].itemsize
    parent_chunks = parent.chunks if parent is not None and parent.dtype == entry.dtype else ()
    read_into = getattr(reader, "read_into", None)
    data = reader.data(entry.name) if read_into is None else None
    for index, chunk in enumerate(chunk_layout(itemsize, entry.shape)):
        parent_id = parent_chunks[index] if index < len(parent_chunks) else None
        if read_into is None:
            yield _Job(entry.dtype, chunk.shape, parent_id, data=data[chunk.start:chunk.stop])
        else:
            yield _Job(entry.dtype, chunk.shape, parent_id, nbytes=chunk.stop - chunk.start,
                       read=functools.partial(read_into, entry.name, chunk.start))


def _chunk_count(entry: TensorEntry) -> int:
    return len(chunk_layout(DTYPES[entry.dtype].itemsize, entry.shape))


def _add_file(store: Store, member: ListedFile, parent: FileRecord | None, bar, buffers: _Buffers,
              use_cache: bool = True) -> FileRecord:
    """Store one file and return its record.

    Raises:
        FileChangedError: the file changed while it was read (then no record names it; the
            objects already written hold exactly the bytes their ids say, and gc removes them).
    """
    source = SourceFile(member.path, "added", follow_symlinks=member.follow, expect=member.stat)
    try:
        st = source.stat
        cached = cached_record(store, member.path, member.rel, st) if use_cache else None
        if cached is not None:
            bar.update(st.st_size)
            return cached
        try:
            record = _store_file(store, source, member.rel, parent, bar, buffers)
        except (FileChangedError, StoreError):  # the store's own trouble (a full disk) as is
            raise
        except Exception:
            # a file rewritten under a parser looks corrupt: say what really happened
            source.check_unchanged()
            raise
        source.check_unchanged()
    finally:
        source.close()
    if use_cache:
        remember_record(store, member.path, st, record)
    return record


def _store_file(store: Store, source: SourceFile, rel: str, parent: FileRecord | None, bar,
                buffers: _Buffers) -> FileRecord:
    fmt = detect_format(source.path)
    parents = {t.name: t for t in parent.tensors} if parent is not None else {}
    if fmt is None:
        blob = _BlobReader(source)
        chunk_ids = _run_jobs(store, _tensor_jobs(blob.entry, parents.get(""), blob), bar, buffers)
        return FileRecord(rel, BLOB_FORMAT, {}, (TensorRecord("", "U8", blob.entry.shape, tuple(chunk_ids)),))
    reader = fmt.open(source)
    try:
        options = {key: store.put_blob(value) for key, value in reader.meta().items()}
        entries = reader.entries()
        jobs = (job for entry in entries
                for job in _tensor_jobs(entry, parents.get(entry.name), reader))
        chunk_ids = _run_jobs(store, jobs, bar, buffers)
    finally:
        reader.close()
    return FileRecord(rel, fmt.name, options, _tensor_records(entries, chunk_ids))


def _tensor_records(entries: list[TensorEntry], chunk_ids: list[str]) -> tuple[TensorRecord, ...]:
    """The records of ``entries`` whose chunks' ids, in order, are ``chunk_ids``."""
    tensors, position = [], 0
    for entry in entries:
        count = _chunk_count(entry)
        tensors.append(TensorRecord(entry.name, entry.dtype, entry.shape,
                                    tuple(chunk_ids[position:position + count])))
        position += count
    return tuple(tensors)


def _run_jobs(store: Store, jobs, bar, buffers: _Buffers | None = None) -> list[str]:
    buffers = buffers or _Buffers()
    ids = []
    for oid, size in ordered_map(lambda job: _put(store, job, buffers), jobs):
        ids.append(oid)
        bar.update(size)
    return ids


def _members(path: str) -> tuple[bool, list[ListedFile]]:
    """(is a directory, the files to add) for the path given to :func:`add`."""
    try:
        st = os.stat(path)  # the path the user names may be a symlink: their choice
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        return True, list_files(path, SKIP_DIRS)
    check_regular(path, st, "; add a regular file or a directory")
    return False, [ListedFile(os.path.basename(path), path, st, follow=True)]


def default_ref(path: str) -> str:
    """The ref ``modelgit add PATH`` records when not given one: the name of the file or
    directory and a hash of its absolute path, so two files of the same name in different
    directories never share a ref (``model.safetensors-3f0a9c51e2d4``)."""
    absolute = os.path.abspath(path)
    name = os.path.basename(absolute).lstrip(".") or "checkpoint"
    name = "".join(c if c.isprintable() and c not in "\\/" else "_" for c in name)
    return f"{name}-{blake3.blake3(absolute.encode()).hexdigest()[:12]}"


def add(store: Store, path: str, parent: Manifest | None = None, ref: str | None = None,
        progress: bool | None = None) -> Manifest:
    """Add a checkpoint file or directory to ``store`` and return its manifest.

    Args:
        store: the store to write to.
        path: a safetensors / torch / npz file, any other file (stored as a blob), or a
            directory (a sharded Hugging Face model, a PEFT adapter...). In a directory only
            regular files are added, a symlink to a file inside it as that file.
        parent: the manifest of the previous version; each chunk is stored as a delta against
            the same chunk of the parent when that pays.
        ref: name a ref in the store after this manifest (a root for ``gc``).
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        FormatError: a file is malformed or unsafe (named in the message).
        UnsupportedFileError: a FIFO, socket or device, or a symlink out of the directory.
        FileChangedError: a file changed while it was being added; no ref is set.
        StoreFullError: the disk filled up; nothing half-written was kept.
    """
    is_dir, files = _members(path)
    parent_files = {f.path: f for f in parent.files} if parent is not None else {}
    if not is_dir and parent is not None and len(parent.files) == 1:
        parent_files = {files[0].rel: parent.files[0]}
    total = sum(member.stat.st_size for member in files)
    records, buffers = [], _Buffers()
    with store.writing(), progress_bar(total, f"add {os.path.basename(path)}", progress) as bar:
        for member in files:
            records.append(_add_file(store, member, parent_files.get(member.rel), bar, buffers))
        manifest = Manifest(tuple(records), "dir" if is_dir else "file")
        manifest_id = store.put_blob(manifest.dumps())
        if ref:
            store.set_ref(ref, manifest_id, note=f"add {os.path.abspath(path)}")
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
            yield _Job(entry.dtype, chunk.shape,
                       parent_chunks[index] if index < len(parent_chunks) else None, data=data)


def _stream_blob_jobs(stream, parent: TensorRecord | None, sizes: list[int]) -> Iterator[_Job]:
    parent_chunks = parent.chunks if parent is not None else ()
    index = 0
    while True:
        data = stream.read(CHUNK_BYTES)
        if not data and index > 0:
            return
        sizes.append(len(data))
        yield _Job("U8", (len(data),), parent_chunks[index] if index < len(parent_chunks) else None,
                   data=data)
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
            record = FileRecord(base, fmt.name, {"header": store.put_blob(header)},
                                _tensor_records(entries, ids))
        else:
            with scratch_directory("modelgit-spool") as tmp:
                path = os.path.join(tmp, base)
                with open(path, "wb") as out:
                    while block := stream.read(1 << 20):
                        out.write(block)
                # a private copy: nobody else writes it
                record = _add_file(store, ListedFile(base, path, os.lstat(path)), parent, bar,
                                   _Buffers(), use_cache=False)
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
    """A manifest from a manifest file, ``REF@{N}``, a ref name, a manifest id or a unique id
    prefix (at least 8 hex digits), tried in that order: see :mod:`modelgit.specs`.

    Raises:
        UsageError: nothing matches (a checkpoint file is named as such), or a prefix is ambiguous.
    """
    from .specs import load_manifest as load

    return load(store, spec)


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
            install_file(tmp, dest, user_modes=mode is None)
        else:  # --force replaces the whole directory, as it replaces a whole file
            install_directory(tmp, dest, owned=lambda name: True)
    except BaseException:
        remove(tmp)
        raise
    if sync:
        sync_path(parent_dir)
    return dest
