"""Output paths that commands write (``-o``), and the temporaries they are written through.

Every command that writes an output (merge, extract-lora, fisher, materialize, train, rebase,
``add -o``) writes it under a temporary name next to it and renames it into place when it is
complete, and checks the path first:

* a path that does not exist is created;
* a symbolic link, a device (``/dev/null``), a FIFO or a socket is refused, never renamed over
  (a rename would replace the link or the device node itself);
* a file where a directory is wanted (or the reverse) is refused;
* an existing non-empty directory needs the command's ``--force`` (or is refused when it has
  none); what ``--force`` then replaces is the command's business (see :func:`install_directory`).

Temporaries are named ``.<name>.modelgit-tmp-<pid>.<start>-<random>``: the process id and its
start time (so that a recycled pid is not taken for the writer). A process killed with ``kill
-9`` cannot remove its own, so each command that writes in a directory first removes the
temporaries there whose process is gone (:func:`remove_stale_temporaries`); a temporary of a
running process is left alone however old it is (a merge can write one shard for minutes).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import time
import uuid
from typing import Callable

from .errors import UsageError

__all__ = ["check_output", "temporary_path", "remove_stale_temporaries", "install_directory",
           "install_file", "normal_modes", "current_umask", "remove", "scratch_directory",
           "TEMPORARY_MARK"]

TEMPORARY_MARK = ".modelgit-tmp-"
# names left by versions that did not record the process: removed once untouched this long
LEGACY_STALE_SECONDS = 120
_TOKEN_NAME = re.compile(r"^\..+" + re.escape(TEMPORARY_MARK) + r"(\d+)\.(\d+)-[0-9a-f]{8}(\.old)?$")

_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file or directory"


def check_output(path: str, kind: str, force: bool = False, flag: str | None = "--force") -> str:
    """Check that ``path`` can take an output of ``kind`` ("file" or "directory").

    Args:
        force: an existing regular file (kind "file") or non-empty directory may be written.
        flag: the option that sets ``force``, for messages (None: the command has none).
    Returns:
        "absent", "empty" (an empty directory), "file" (a regular file, with ``force``) or
        "nonempty" (a non-empty directory, with ``force``).
    Raises:
        UsageError: the path is a link, a device, a FIFO or a socket; a file where a directory
            is wanted or the reverse; or exists without ``force``.
    """
    path = os.path.normpath(path)  # "link/" would look through the link
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(
            f"output {path} is a symbolic link (to {os.readlink(path)}); modelgit puts an output "
            "in place by renaming it over the path, which would replace the link itself: give the "
            "path it points to, or another one")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UsageError(f"output {path} exists and is {_kind(st.st_mode)}, which modelgit will "
                         f"not replace; give the path of a {kind} to create")
    if kind == "directory" and not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"output {path} exists and is a file, not a directory; give a "
                         "directory path (it is created)")
    if kind == "file" and stat.S_ISDIR(st.st_mode):
        raise UsageError(f"output {path} is a directory; give the path of the file to write "
                         f"(e.g. {os.path.join(path, 'NAME')})")
    if stat.S_ISREG(st.st_mode):
        if not force:
            raise UsageError(f"output {path} already exists; "
                             + (f"pass {flag} to replace it" if flag else "choose another path"))
        return "file"
    if not os.listdir(path):
        return "empty"
    if not force:
        raise UsageError(f"output directory {path} exists and is not empty; "
                         + (f"pass {flag} to write into it" if flag else "choose a new directory"))
    return "nonempty"


def _start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
        return int(data[data.rindex(b")") + 2:].split()[19])  # field 22, after "(comm) state"
    except (OSError, ValueError, IndexError):
        return None


_token: tuple[int, str] | None = None


def _process_token() -> str:
    """``<pid>.<start time>`` of this process (recomputed after a fork)."""
    global _token
    pid = os.getpid()
    if _token is None or _token[0] != pid:
        _token = (pid, f"{pid}.{_start_time(pid) or 0}")
    return _token[1]


def temporary_path(dest: str) -> str:
    """A fresh temporary path next to ``dest``, named after it and this process."""
    parent, name = os.path.split(os.path.abspath(dest))
    return os.path.join(parent, f".{name}{TEMPORARY_MARK}{_process_token()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int, start: int) -> bool:
    if os.path.isdir("/proc/self"):
        found = _start_time(pid)
        return found is not None and (start == 0 or found == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory: str, name: str | None = None) -> int:
    """Delete the temporaries in ``directory`` left by processes that are gone (and, for
    ``name``, those of older versions untouched for ``LEGACY_STALE_SECONDS``); returns how many.
    """
    removed = 0
    try:
        entries = [e for e in os.scandir(directory) if TEMPORARY_MARK in e.name and e.name.startswith(".")]
    except OSError:
        return 0
    for entry in entries:
        match, stale = _TOKEN_NAME.match(entry.name), False
        if match:
            stale = not _alive(int(match.group(1)), int(match.group(2)))
        elif name is not None and entry.name.startswith(f".{name}{TEMPORARY_MARK}"):
            with contextlib.suppress(OSError):
                stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > LEGACY_STALE_SECONDS
        if stale:
            remove(entry.path)
            removed += 1
    return removed


def remove(path: str) -> None:
    """Delete a file or a directory tree (never following a link); nothing if it is gone."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only be read by setting
    it, which would give files that other threads create meanwhile the wrong mode)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc (macOS): the only way to read it
    os.umask(mask)
    return mask


def normal_modes(path: str) -> None:
    """Give ``path`` (a file, or a directory and everything in it) the modes a file or
    directory the user created would have: ``0666 & ~umask`` for files (``0777`` when one was
    executable), ``0777 & ~umask`` for directories. Libraries write through private temporaries
    (safetensors and PEFT leave ``0600`` files, ``mkdtemp`` ``0700`` directories), and what
    modelgit writes for the user must not differ from the files beside it. Links are left alone.
    """
    umask = current_umask()

    def fix(target: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            wanted = 0o777 & ~umask
        elif stat.S_ISREG(st.st_mode):
            wanted = (0o777 if st.st_mode & 0o111 else 0o666) & ~umask
        else:
            return
        if stat.S_IMODE(st.st_mode) != wanted:
            os.chmod(target, wanted)

    fix(path, os.lstat(path))
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                target = os.path.join(root, name)
                fix(target, os.lstat(target))


def install_file(tmp: str, dest: str, user_modes: bool = True) -> None:
    """Rename the finished file ``tmp`` over ``dest``, checked again (a link, a device or a
    directory may have appeared there while it was written).

    Args:
        user_modes: give it the umask's mode first (see :func:`normal_modes`); False keeps the
            mode the writer set on purpose.
    """
    dest = os.path.normpath(dest)
    check_output(dest, "file", force=True)
    if user_modes:
        normal_modes(tmp)
    os.replace(tmp, dest)


def install_directory(tmp: str, dest: str, owned: Callable[[str], bool] = lambda name: False,
                      user_modes: bool = True) -> None:
    """Put the finished directory ``tmp`` in place as ``dest``, its files and directories
    with the umask's modes (see :func:`normal_modes`) unless ``user_modes`` is False (a git
    clone, whose object files git makes read-only on purpose).

    An absent or empty ``dest`` is replaced by a rename. A non-empty one (its command's
    ``--force``) keeps every entry that the output does not replace: an entry of ``dest`` with
    the name of one of ``tmp`` is replaced by it, one for which ``owned(name)`` is true (what an
    earlier run of the command wrote, such as stale shards) is deleted, any other is kept. When
    nothing would be kept the whole directory is swapped at once; otherwise each file is
    renamed into place on its own (each atomically, the set not).

    Raises:
        UsageError: ``dest`` is no longer a directory that can take the output (it changed
            while the output was written), or holds a directory where the output has a file.
            ``tmp`` is removed then.
    """
    dest = os.path.normpath(dest)
    try:
        if user_modes:
            normal_modes(tmp)
        state = check_output(dest, "directory", force=True)
        if state in ("absent", "empty"):
            try:
                os.rename(tmp, dest)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                state = check_output(dest, "directory", force=True)  # it filled up meanwhile
        new = set(os.listdir(tmp))
        present = os.listdir(dest)
        for name in sorted(new & set(present)):
            target = os.path.join(dest, name)
            if os.path.isdir(target) and not os.path.islink(target):
                raise UsageError(f"{target} is a directory, where the output has a file of that "
                                 "name; move it away and run the command again")
        if all(name in new or owned(name) for name in present):
            old = temporary_path(dest) + ".old"
            os.rename(dest, old)
            os.rename(tmp, dest)
            remove(old)
            return
        for name in sorted(new):
            os.replace(os.path.join(tmp, name), os.path.join(dest, name))
        for name in present:
            if name not in new and owned(name):
                remove(os.path.join(dest, name))
        os.rmdir(tmp)
    except BaseException:
        remove(tmp)
        raise


@contextlib.contextmanager
def scratch_directory(name: str, parent: str | None = None):
    """A temporary directory (in ``parent``, default the system's temporary directory) named
    after ``name`` and this process, removed afterwards; those a killed process left there
    are removed first (a spooled checkpoint is as big as the checkpoint)."""
    import tempfile

    parent = parent or tempfile.gettempdir()
    remove_stale_temporaries(parent)
    path = temporary_path(os.path.join(parent, name))
    os.makedirs(path, mode=0o700)  # private, as mkdtemp makes them
    try:
        yield path
    finally:
        remove(path)
