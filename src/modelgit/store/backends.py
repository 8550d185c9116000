"""Where object bytes live: a local directory or any fsspec filesystem.

A backend stores opaque byte strings under slash-separated keys. ``write_atomic`` makes a key
appear whole or not at all: locally by writing a temporary file in the same filesystem,
fsyncing it, renaming it over the key and fsyncing the directory; on fsspec filesystems by
writing a temporary key and moving it (object stores such as S3 make a single PUT atomic anyway).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import posixpath
import threading
import time
import uuid
from typing import Iterator, Protocol

from .._files import libc_function, reserve_space, sync_path, write_all
from ..errors import LockTimeoutError, StoreError, StoreFullError

__all__ = ["Backend", "LocalBackend", "FsspecBackend", "open_backend"]

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
TMP_PREFIX = "tmp/"


class Backend(Protocol):
    url: str

    def exists(self, key: str) -> bool: ...
    def read(self, key: str) -> bytes: ...
    def write_atomic(self, key: str, data) -> None: ...
    def delete(self, key: str) -> None: ...
    def move(self, key: str, new_key: str, replace: bool = True) -> None: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def size(self, key: str) -> int: ...
    def mtime(self, key: str) -> float: ...
    def touch(self, key: str) -> bool: ...
    def lock(self, shared: bool, timeout: float = 600.0) -> contextlib.AbstractContextManager: ...


def _full_error(url: str, key: str, exc: OSError) -> StoreFullError:
    return StoreFullError(
        f"no space left writing {key!r} to the store at {url} ({exc.strerror}); nothing "
        "half-written was kept. Free some space (or run `modelgit gc`) and run the command again."
    )


_SYNC_FILE_RANGE = libc_function("sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                                     ctypes.c_uint])
_SYNC_FILE_RANGE_WRITE = 2  # start writing the dirty pages back; do not wait


def _start_writeback(fd: int) -> None:
    """Start writing a just-written file to the disk while the caller goes on (Linux); the
    fdatasync that commits it later then finds the data written and has little left to do."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # advisory: a failure shows at fdatasync


_FICLONE = 0x40049409  # ioctl(dst, FICLONE, src): share the source's blocks copy-on-write


def _reflink(source: str, target: str) -> bool:
    """Create ``target`` as a reflink of ``source``; False (and nothing left) where the
    filesystem cannot."""
    try:
        src = os.open(source, os.O_RDONLY)
    except OSError:
        return False
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:
        os.close(src)
        return False
    try:
        fcntl.ioctl(dst, _FICLONE, src)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(target)
        return False
    finally:
        os.close(src)
        os.close(dst)


# staged bytes after which a batch is committed: bounds the work a crash can lose
STAGE_BATCH_BYTES = 256 * 1024 * 1024


class LocalBackend:
    """A directory on a local filesystem; the fast path, with real file locks.

    Besides ``write_atomic`` (temp file, fsync, rename), objects can be *staged*: written to
    temporary files whose writeback starts at once (``sync_file_range``), then committed in a
    batch: an fdatasync and a rename per file. By then the data is on its way to the disk, so
    the first fdatasync commits one journal transaction for the whole batch and the others find
    little left to do. (A ``syncfs`` per batch, used before, also flushed every other dirty file
    of the filesystem, such as the checkpoint the user had just written: 0.4-0.7 s of a 1 GB
    ``git add``.) Until its batch is committed a staged object is invisible, so a crash leaves
    only temporary files, never a half-written object.
    """

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.url = self.root
        self._made_dirs: set[str] = set()
        self._staged: list[tuple[str, str]] = []
        self._staged_bytes = 0
        self._stage_guard = threading.Lock()
        # batches are renamed into place one after the other, in the order they were staged: a
        # transfer stages a delta parent before its child, and a child must never be visible
        # (nor survive a crash) without its parent
        self._commit_guard = threading.Lock()
        self._reflinks: bool | None = None  # unknown until the first try

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def read(self, key: str) -> bytes:
        with open(self._path(key), "rb") as handle:
            return handle.read()

    def read_head(self, key: str, size: int) -> bytes:
        """The first ``size`` bytes (fewer if the file is shorter)."""
        with open(self._path(key), "rb") as handle:
            return handle.read(size)

    def read_from(self, key: str, offset: int) -> bytes:
        """The bytes from ``offset`` to the end (a fetch that read the head reads the rest)."""
        with open(self._path(key), "rb") as handle:
            handle.seek(offset)
            return handle.read()

    def _ensure_dir(self, path: str) -> None:
        if path not in self._made_dirs:
            os.makedirs(path, exist_ok=True)
            self._made_dirs.add(path)

    def _write_temp(self, data, fsync: bool, more=()) -> str:
        tmp_dir = os.path.join(self.root, "tmp")
        self._ensure_dir(tmp_dir)
        tmp = os.path.join(tmp_dir, f"{os.getpid()}-{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            reserve_space(fd, sum(memoryview(part).nbytes for part in (data, *more)))
            for part in (data, *more):
                write_all(fd, part)
            if fsync:
                os.fsync(fd)
            else:
                _start_writeback(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def stage(self, key: str, data, *more) -> None:
        """Write ``key`` (``data`` followed by the buffers ``more``) to a temporary file; it
        becomes visible at the next commit."""
        final = self._path(key)
        self._ensure_dir(os.path.dirname(final))
        try:
            tmp = self._write_temp(data, fsync=False, more=more)  # made durable at commit
        except OSError as exc:
            self.discard_staged()
            if exc.errno in _FULL_ERRNOS:
                raise _full_error(self.url, key, exc) from exc
            raise StoreError(f"cannot write {key!r} in the store at {self.url}: {exc}") from exc
        with self._stage_guard:
            self._staged.append((tmp, final))
            self._staged_bytes += sum(memoryview(part).nbytes for part in (data, *more))
            due = self._staged_bytes >= STAGE_BATCH_BYTES
        if due:
            self.commit_staged()

    def commit_staged(self) -> None:
        """Make staged objects durable (fdatasync each) and visible (rename each into place, in
        the order they were staged)."""
        with self._commit_guard:
            with self._stage_guard:
                batch, self._staged, self._staged_bytes = self._staged, [], 0
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[tuple[str, str]]) -> None:
        try:
            for tmp, _ in batch:
                sync_path(tmp, data_only=True)
            for tmp, final in batch:
                os.replace(tmp, final)
        except OSError as exc:
            for tmp, _ in batch:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if exc.errno in _FULL_ERRNOS:
                raise _full_error(self.url, "a batch of objects", exc) from exc
            raise StoreError(f"cannot commit objects in the store at {self.url}: {exc}") from exc

    # ---------------------------------------------------------------- ordered and linked writes
    def path_of(self, key: str) -> str:
        """The file that holds ``key`` (for another LocalBackend to link)."""
        return self._path(key)

    def write_temp(self, data, *more) -> str:
        """Write ``data`` (then ``more``) to a new temporary file, which :meth:`publish` makes
        visible under its key. Returns its handle (a path)."""
        try:
            return self._write_temp(data, fsync=False, more=more)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                raise _full_error(self.url, "a temporary object", exc) from exc
            raise StoreError(f"cannot write in the store at {self.url}: {exc}") from exc

    def link_temp(self, source: str) -> str | None:
        """A temporary file with the contents of the file ``source`` without copying them: a
        reflink (its own inode; btrfs, XFS) where the filesystem has them, else a hard link
        (the same inode). None when neither is possible (another filesystem, no permission):
        the caller copies.

        A hard link shares the file with the other store. That is safe because no store ever
        changes an object file in place: objects are replaced by rename, moved to quarantine
        by rename and deleted by unlink, each of which leaves the other name as it was. Its
        mtime is shared too, and is set to now here: gc keeps objects younger than its grace
        period, and a linked object is new in this store (the other store then keeps its own
        copy an hour longer, which errs on the safe side).
        """
        tmp_dir = os.path.join(self.root, "tmp")
        self._ensure_dir(tmp_dir)
        tmp = os.path.join(tmp_dir, f"{os.getpid()}-{uuid.uuid4().hex}")
        if self._reflinks is not False and _reflink(source, tmp):
            self._reflinks = True
            return tmp
        if self._reflinks is None:
            self._reflinks = False  # not on this filesystem: do not try again per object
        try:
            os.link(source, tmp)
            os.utime(tmp)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return None
        return tmp

    def discard_temp(self, handle: str | None) -> None:
        if handle is not None:
            with contextlib.suppress(OSError):
                os.unlink(handle)

    def read_temp(self, handle: str) -> bytes:
        with open(handle, "rb") as file:
            return file.read()

    def publish(self, pairs: list[tuple[str, str]]) -> None:
        """Make temporary files visible as their keys, in this order, at the next commit
        (fdatasync each, then rename each: a delta must never be visible before its parent)."""
        staged = []
        for handle, key in pairs:
            final = self._path(key)
            self._ensure_dir(os.path.dirname(final))
            staged.append((handle, final))
        with self._stage_guard:
            self._staged.extend(staged)
            self._staged_bytes += sum(os.path.getsize(h) for h, _ in staged)
            due = self._staged_bytes >= STAGE_BATCH_BYTES
        if due:
            self.commit_staged()

    def discard_staged(self) -> None:
        with self._stage_guard:
            batch, self._staged, self._staged_bytes = self._staged, [], 0
        for tmp, _ in batch:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def write_atomic(self, key: str, data) -> None:
        final = self._path(key)
        self._ensure_dir(os.path.dirname(final))
        try:
            tmp = self._write_temp(data, fsync=True)
            try:
                os.replace(tmp, final)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                raise _full_error(self.url, key, exc) from exc
            raise StoreError(f"cannot write {key!r} in the store at {self.url}: {exc}") from exc

    def sync_dirs(self) -> None:
        """fsync every directory written to, so renames survive a power loss."""
        for path in sorted(self._made_dirs):
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def move(self, key: str, new_key: str, replace: bool = True) -> None:
        """Rename ``key`` to ``new_key`` (FileNotFoundError when ``key`` is absent); without
        ``replace``, an existing ``new_key`` is kept and ``key`` is deleted."""
        source, target = self._path(key), self._path(new_key)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if replace:
            os.replace(source, target)
            return
        with contextlib.suppress(FileExistsError):
            os.link(source, target)
        os.unlink(source)

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix.rstrip("/"))
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in files:
                yield f"{rel}/{name}" if rel != "." else name

    def size(self, key: str) -> int:
        return os.path.getsize(self._path(key))

    def mtime(self, key: str) -> float:
        return os.path.getmtime(self._path(key))

    def touch(self, key: str) -> bool:
        """Set ``key``'s mtime to now; False when it does not exist."""
        try:
            os.utime(self._path(key))
        except FileNotFoundError:
            return False
        except OSError:  # a store we may only read (EPERM, EROFS): present all the same
            return self.exists(key)
        return True

    @contextlib.contextmanager
    def lock(self, shared: bool, timeout: float = 600.0):
        """Hold the store-wide lock: shared for writers of objects, exclusive for gc."""
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockTimeoutError(
                            f"the store at {self.url} stayed locked by another modelgit process "
                            f"for {timeout:.0f} s; wait for it to finish (a running gc holds "
                            "the lock) and try again"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing releases the flock


class FsspecBackend:
    """Any fsspec filesystem (``memory://``, ``file://``, ``s3://``...).

    Object writes are safe under concurrency because an object's key names its content. Locks
    are process-local here: run ``gc`` on a remote store only when nobody is pushing to it.
    """

    def __init__(self, url: str, **storage_options):
        import fsspec

        self.fs, self.base = fsspec.core.url_to_fs(url, **storage_options)
        self.base = self.base.rstrip("/")
        self.url = url
        self._made_dirs: set[str] = set()

    def _ensure_parent(self, path: str) -> None:
        parent = posixpath.dirname(path)
        if parent not in self._made_dirs:
            self.fs.makedirs(parent, exist_ok=True)  # a no-op on object stores
            self._made_dirs.add(parent)

    def _path(self, key: str) -> str:
        return f"{self.base}/{key}"

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def read(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))

    def read_head(self, key: str, size: int) -> bytes:
        """The first ``size`` bytes (fewer if the object is shorter): one ranged read."""
        return self.fs.cat_file(self._path(key), start=0, end=size)

    def read_from(self, key: str, offset: int) -> bytes:
        """The bytes from ``offset`` to the end: one ranged read."""
        return self.fs.cat_file(self._path(key), start=offset)

    def write_atomic(self, key: str, data) -> None:
        tmp = self._path(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}")
        try:
            self._ensure_parent(tmp)
            self._ensure_parent(self._path(key))
            self.fs.pipe_file(tmp, bytes(data))
            self.fs.mv(tmp, self._path(key))
        except OSError as exc:
            with contextlib.suppress(Exception):
                self.fs.rm_file(tmp)
            if exc.errno in _FULL_ERRNOS:
                raise _full_error(self.url, key, exc) from exc
            raise StoreError(f"cannot write {key!r} to {self.url}: {exc}") from exc

    def sync_dirs(self) -> None:
        pass

    def write_temp(self, data, *more) -> str:
        """Write a temporary key; :meth:`publish` moves it to its key. Returns its path."""
        tmp = self._path(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}")
        try:
            self._ensure_parent(tmp)
            self.fs.pipe_file(tmp, b"".join(bytes(part) for part in (data, *more)))
        except OSError as exc:
            with contextlib.suppress(Exception):
                self.fs.rm_file(tmp)
            if exc.errno in _FULL_ERRNOS:
                raise _full_error(self.url, "a temporary object", exc) from exc
            raise StoreError(f"cannot write to {self.url}: {exc}") from exc
        return tmp

    def link_temp(self, source: str) -> None:
        return None  # no links between an fsspec filesystem and anything: the caller copies

    def discard_temp(self, handle: str | None) -> None:
        if handle is not None:
            with contextlib.suppress(Exception):
                self.fs.rm_file(handle)

    def read_temp(self, handle: str) -> bytes:
        return self.fs.cat_file(handle)

    def publish(self, pairs: list[tuple[str, str]]) -> None:
        """Move temporary keys to their keys, one after the other in this order (a delta never
        visible before its parent). On object stores a move is a copy then a delete, and the
        copy replaces the key whole: a reader gets the old object or the new one."""
        for handle, key in pairs:
            final = self._path(key)
            try:
                self._ensure_parent(final)
                self.fs.mv(handle, final)
            except OSError as exc:
                if exc.errno in _FULL_ERRNOS:
                    raise _full_error(self.url, key, exc) from exc
                raise StoreError(f"cannot write {key!r} to {self.url}: {exc}") from exc

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def move(self, key: str, new_key: str, replace: bool = True) -> None:
        """Rename ``key`` to ``new_key`` (see LocalBackend.move; not atomic on object stores)."""
        source, target = self._path(key), self._path(new_key)
        if not self.fs.exists(source):
            raise FileNotFoundError(source)
        if not replace and self.fs.exists(target):
            self.fs.rm_file(source)
            return
        self._ensure_parent(target)
        self.fs.mv(source, target)

    def list(self, prefix: str) -> Iterator[str]:
        root = self._path(prefix.rstrip("/"))
        if not self.fs.exists(root):
            return
        base = self.base.lstrip("/")
        for path in self.fs.find(root):
            rel = path.lstrip("/")
            if rel.startswith(base + "/"):
                yield rel[len(base) + 1:]

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def mtime(self, key: str) -> float:
        try:
            return self.fs.modified(self._path(key)).timestamp()
        except (NotImplementedError, AttributeError):
            return time.time()

    def touch(self, key: str) -> bool:
        """Whether ``key`` exists (an object store cannot change an object's time in place)."""
        return self.exists(key)

    @contextlib.contextmanager
    def lock(self, shared: bool, timeout: float = 600.0):
        yield


def open_backend(url: str) -> Backend:
    """A backend for ``url``: a plain path → LocalBackend, ``scheme://...`` → FsspecBackend."""
    if "://" not in url or url.startswith("file://"):
        return LocalBackend(url[len("file://"):] if url.startswith("file://") else url)
    return FsspecBackend(url)
