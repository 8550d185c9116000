"""Where object bytes live: a local directory or any fsspec filesystem.

A backend stores opaque byte strings under slash-separated keys. ``write_atomic`` makes a key
appear whole or not at all: locally by writing a temporary file in the same filesystem,
fsyncing it, renaming it over the key and fsyncing the directory; on fsspec filesystems by
writing a temporary key and moving it (object stores such as S3 make a single PUT atomic anyway).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import posixpath
import time
import uuid
from typing import Iterator, Protocol

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
    def list(self, prefix: str) -> Iterator[str]: ...
    def size(self, key: str) -> int: ...
    def mtime(self, key: str) -> float: ...
    def lock(self, shared: bool, timeout: float = 600.0) -> contextlib.AbstractContextManager: ...


def _full_error(url: str, key: str, exc: OSError) -> StoreFullError:
    return StoreFullError(
        f"no space left writing {key!r} to the store at {url} ({exc.strerror}); nothing "
        "half-written was kept. Free some space (or run `modelgit gc`) and run the command again."
    )


class LocalBackend:
    """A directory on a local filesystem; the fast path, with real file locks."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.url = self.root
        self._made_dirs: set[str] = set()

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def read(self, key: str) -> bytes:
        with open(self._path(key), "rb") as handle:
            return handle.read()

    def _ensure_dir(self, path: str) -> None:
        if path not in self._made_dirs:
            os.makedirs(path, exist_ok=True)
            self._made_dirs.add(path)

    def write_atomic(self, key: str, data) -> None:
        final = self._path(key)
        tmp_dir = os.path.join(self.root, "tmp")
        self._ensure_dir(tmp_dir)
        self._ensure_dir(os.path.dirname(final))
        tmp = os.path.join(tmp_dir, f"{os.getpid()}-{uuid.uuid4().hex}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
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

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

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

    @contextlib.contextmanager
    def lock(self, shared: bool, timeout: float = 600.0):
        yield


def open_backend(url: str) -> Backend:
    """A backend for ``url``: a plain path → LocalBackend, ``scheme://...`` → FsspecBackend."""
    if "://" not in url or url.startswith("file://"):
        return LocalBackend(url[len("file://"):] if url.startswith("file://") else url)
    return FsspecBackend(url)
