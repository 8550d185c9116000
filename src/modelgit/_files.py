"""Small file helpers: whole-file writes that are never seen half-written."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os

__all__ = ["write_atomic", "write_json", "reserve_space", "write_all", "WRITE_PIECE", "libc_function",
           "sync_path"]

# A checkpoint written into a work tree goes out 128 KiB per call, as cp writes. Linux (6.x,
# ext4 and others) gives a file written in bigger pieces large folios, which need free blocks
# of 512 KiB-2 MiB; the file git deletes just before a checkout (written by cp, a training
# script, or an earlier checkout) gives back the small blocks it was written in, and on a VM
# whose host takes back free blocks of 2 MiB and more (virtio-balloon free page reporting) the
# large ones come back from the host on first touch. Measured here: 1 GB written in 4 MiB pieces
# right after deleting a 1 GB file written in 128 KiB pieces took 1.0-2.3 s; in 128 KiB pieces,
# 0.21-0.24 s (benchmarks/vm_pages.py); a git checkout of 1 GB, 2.0 s against 1.0 s. New files
# that replace nothing (store objects) are better written whole: 1 GB `git add` 1.9 s against
# 2.5 s in pieces.
WRITE_PIECE = 128 * 1024


def write_all(fd: int, data, offset: int | None = None, piece_size: int | None = None) -> None:
    """Write all of ``data`` to ``fd`` (at ``offset`` with pwrite, else at the file position),
    at most ``piece_size`` bytes per call (None: as much as the kernel takes)."""
    view = memoryview(data).cast("B")
    while view:
        piece = view[:piece_size] if piece_size else view
        if offset is None:
            written = os.write(fd, piece)
        else:
            written = os.pwrite(fd, piece, offset)
            offset += written
        view = view[written:]


def libc_function(name: str, argtypes: list):
    """The C library's function ``name`` (errno kept for ``ctypes.get_errno``), or None where
    this system has none."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    return function


def sync_path(path: str, data_only: bool = False) -> None:
    """fsync (or fdatasync) the file or directory ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


# not posix_fallocate: where a filesystem cannot reserve space, glibc emulates that one by
# writing a byte into every block
_FALLOCATE = libc_function("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])
_FALLOC_FL_KEEP_SIZE = 1


def reserve_space(fd: int, nbytes: int) -> None:
    """Reserve ``nbytes`` of disk for a file about to be written front to back, keeping its
    size (bytes past the end are released when the file is truncated or deleted).

    A full disk fails here, before anything is written; and ext4 then skips reserving blocks
    page by page as the writes come (1 GB written: 0.20 -> 0.14 s of kernel time here).
    Filesystems that cannot reserve space are written as before.

    Raises:
        OSError: ENOSPC or EDQUOT, the space is not there.
    """
    if _FALLOCATE is None or nbytes <= 0:
        return
    if _FALLOCATE(fd, _FALLOC_FL_KEEP_SIZE, 0, nbytes) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err, os.strerror(err))


def write_atomic(path: str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file: fsync, rename, fsync the directory.

    A crash leaves the old file or the new one, never a mix; the temporary a killed process
    leaves is removed by the next write in that directory (see :mod:`modelgit._outputs`).

    Raises:
        UsageError: ``path`` is a link, a device, a FIFO or a directory (never renamed over).
    """
    from ._outputs import check_output, install_file, remove_stale_temporaries, temporary_path

    if isinstance(data, str):
        data = data.encode("utf-8")
    check_output(path, "file", force=True)
    remove_stale_temporaries(os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        install_file(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str, data) -> None:
    """Canonical JSON (sorted keys, two-space indent, trailing newline), written atomically."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
