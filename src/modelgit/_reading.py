"""Reading files that someone else may be writing at the same time.

A checkpoint being added may be rewritten, truncated, replaced or deleted while it is read (a
training run saving its next step, a copy still in progress). Two rules keep that from poisoning
the store or killing the process:

* Bytes are read with ``pread`` into buffers this process owns, never through a memory mapping
  of the file. Whatever is hashed is then exactly what is encoded and written (a mapping can
  change between the two, which gave objects the id of bytes they did not hold), and a file that
  shrinks under the reader gives a short read and a message, not ``SIGBUS``.
* The file's identity and stat (device, inode, size, mtime, ctime) are taken when it is opened
  and compared once it has been read (:meth:`SourceFile.check_unchanged`): any difference fails
  with :class:`~modelgit.errors.FileChangedError`, so no manifest describes a mix of two versions.
  (Like git, this cannot see a rewrite that keeps the size and lands within the filesystem's
  timestamp granularity of the moment the file was opened.)

Files are opened with ``O_NONBLOCK`` and checked to be regular files before a byte is read, so a
FIFO never blocks a reader; ``follow_symlinks=False`` adds ``O_NOFOLLOW`` and ``expect`` the
device and inode seen when a directory was listed, so a path swapped in between is noticed.
:func:`list_files` lists a directory to add without opening anything: regular files, and
symlinks to regular files inside it; FIFOs, sockets, devices and other links are refused.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from .errors import FileChangedError, FormatError, UnsupportedFileError

__all__ = ["SourceFile", "ListedFile", "list_files", "file_kind", "check_regular"]

_KINDS = {stat.S_IFIFO: "named pipe (FIFO)", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
          stat.S_IFBLK: "block device", stat.S_IFDIR: "directory", stat.S_IFLNK: "symbolic link",
          stat.S_IFREG: "regular file"}


def file_kind(st: os.stat_result) -> str:
    """What kind of file a stat describes, in words ("named pipe (FIFO)", "socket"...)."""
    return _KINDS.get(stat.S_IFMT(st.st_mode), "special file")


def check_regular(path: str, st: os.stat_result, context: str = "") -> None:
    """Raise :class:`UnsupportedFileError` unless ``st`` is a regular file's.

    Args:
        context: how to get past the refusal, appended to the message.
    """
    if not stat.S_ISREG(st.st_mode):
        raise UnsupportedFileError(
            f"{path}: is a {file_kind(st)}, not a regular file; modelgit reads only regular files "
            f"and never opens pipes, sockets or devices{context}")


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class SourceFile:
    """A regular file opened for positional reads, with a check that it did not change.

    Args:
        path: the file.
        doing: what the reader is doing, for messages ("added", "read").
        follow_symlinks: False opens with ``O_NOFOLLOW`` (a file found by listing a directory).
        expect: the ``lstat`` seen when the file was listed; a file with another device or
            inode at ``path`` now raises :class:`FileChangedError`.

    Raises:
        UnsupportedFileError: ``path`` is a FIFO, socket, device or directory.
        FileChangedError: ``path`` vanished or was replaced since it was listed.
        FormatError: ``path`` cannot be opened (permissions...).
    """

    def __init__(self, path: str, doing: str = "read", follow_symlinks: bool = True,
                 expect: os.stat_result | None = None):
        self.path, self.doing, self._follow = path, doing, follow_symlinks
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        if not follow_symlinks:
            flags |= os.O_NOFOLLOW
        try:
            self.fd = os.open(path, flags)
        except FileNotFoundError:
            if expect is not None:
                raise self.changed("it was deleted") from None
            raise FormatError(f"cannot open {path}: no such file") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP and not follow_symlinks:
                raise self.changed("it was replaced by a symbolic link") from None
            if exc.errno == errno.ENXIO:  # a socket
                raise UnsupportedFileError(f"{path}: is a socket, not a regular file; modelgit "
                                           "reads only regular files") from None
            raise FormatError(f"cannot open {path}: {exc.strerror}") from None
        try:
            self.stat = os.fstat(self.fd)
            check_regular(path, self.stat)
            if expect is not None and (expect.st_dev, expect.st_ino) != (self.stat.st_dev, self.stat.st_ino):
                raise self.changed("it was replaced by another file")
        except BaseException:
            os.close(self.fd)
            raise
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a bigger read-ahead
            except OSError:
                pass  # advice only

    @property
    def size(self) -> int:
        """The size when the file was opened."""
        return self.stat.st_size

    def changed(self, why: str) -> FileChangedError:
        again = "add it again" if self.doing == "added" else "run the command again"
        return FileChangedError(f"{self.path} changed while it was being {self.doing} ({why}): "
                                f"{again} once it is no longer being written")

    def read_into(self, offset: int, out) -> None:
        """Fill ``out`` (a writable buffer) with the bytes at ``offset``.

        Raises:
            FileChangedError: the file ends before ``out`` is full (it was truncated).
        """
        if self.fd < 0:
            raise ValueError(f"read of {self.path} after it was closed")
        view = memoryview(out).cast("B")
        position = offset
        while view:
            got = os.preadv(self.fd, [view], position)
            if got == 0:
                raise self.changed(f"it ends at byte {position}, it held {self.size} bytes when "
                                   "it was opened: truncated")
            view = view[got:]
            position += got

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` (fewer only at the end of the file as it was opened)."""
        size = max(0, min(size, self.size - offset))
        out = bytearray(size)
        self.read_into(offset, out)
        return bytes(out)

    def file_object(self):
        """A new binary file object on the same open file, at its start (for loaders that want
        one). It shares the file position with any other one: use one at a time."""
        handle = os.fdopen(os.dup(self.fd), "rb")
        handle.seek(0)
        return handle

    def check_unchanged(self) -> None:
        """Raise :class:`FileChangedError` when the file is not the one that was opened, as it was.

        Compares the open file's size, mtime, ctime and inode with those at opening, and the
        path's device and inode with the open file's (a file renamed over the path).
        """
        now = os.fstat(self.fd)
        try:  # first: a file renamed over the path or unlinked also changes the old one's ctime
            at_path = os.stat(self.path) if self._follow else os.lstat(self.path)
        except FileNotFoundError:
            raise self.changed("it was deleted") from None
        if (at_path.st_dev, at_path.st_ino) != (now.st_dev, now.st_ino):
            raise self.changed("another file was put in its place")
        if now.st_size != self.stat.st_size:
            raise self.changed(f"its size went from {self.stat.st_size} to {now.st_size} bytes")
        if _signature(now) != _signature(self.stat):
            raise self.changed("it was written to")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "SourceFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class ListedFile:
    """A file to read: its path relative to what was listed, what to open, and its lstat then."""
    rel: str
    path: str
    stat: os.stat_result
    follow: bool = False  # True only for a path the user named, which may be a symlink


_REFUSE_HINT = "; move it out of the directory, or add the files you want one by one"


def _link_target(root: str, real_root: str, path: str, rel: str) -> ListedFile:
    """The file a symlink inside a listed directory stands for: the regular file it points to,
    which must lie inside the directory too."""
    target = os.path.realpath(path)
    if os.path.commonpath([real_root, target]) != real_root:
        raise UnsupportedFileError(
            f"{path}: is a symbolic link to {target}, outside {root}; modelgit does not follow "
            "links out of an added directory. Replace the link by a copy of the file (`cp -L`), "
            "or add the file it points to on its own")
    try:
        st = os.stat(target)
    except OSError:
        raise UnsupportedFileError(f"{path}: is a symbolic link to {target}, which does not "
                                   f"exist{_REFUSE_HINT}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UnsupportedFileError(
            f"{path}: is a symbolic link to a directory; modelgit follows only links to files "
            "(a directory link can loop or add the same files twice): replace it by the "
            "directory itself, or remove it")
    check_regular(target, st, f" ({path} links to it){_REFUSE_HINT}")
    return ListedFile(rel, target, os.lstat(target))


def list_files(root: str, skip_dirs=frozenset()) -> list[ListedFile]:
    """Every file under directory ``root`` (directories named in ``skip_dirs`` left out).

    Only regular files are listed; a symlink to a regular file inside ``root`` is listed as that
    file (``rel`` the link's path, ``path`` the file's). Anything else is refused with
    :class:`UnsupportedFileError` before any file is opened: FIFOs, sockets and devices, and
    symlinks to a directory, out of ``root`` or to nothing. Each entry carries the ``lstat``
    seen now, which :class:`SourceFile` checks when it is opened (``expect``).
    """
    real_root = os.path.realpath(root)
    out: list[ListedFile] = []
    todo = [(root, "")]
    while todo:
        directory, prefix = todo.pop()
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
        for entry in entries:
            rel = prefix + entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if entry.name not in skip_dirs:
                    todo.append((entry.path, rel + "/"))
            elif stat.S_ISLNK(st.st_mode):
                out.append(_link_target(root, real_root, entry.path, rel))
            else:
                check_regular(entry.path, st, _REFUSE_HINT)
                out.append(ListedFile(rel, entry.path, st))
    return sorted(out, key=lambda listed: listed.rel)
