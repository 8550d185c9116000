"""Small file helpers: whole-file writes that are never seen half-written."""

from __future__ import annotations

import contextlib
import json
import os

__all__ = ["write_atomic", "write_json"]


def write_atomic(path: str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file: fsync, rename, fsync the directory.

    A crash leaves the old file or the new one, never a mix (at worst a stray ``.tmp-PID``).
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
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
