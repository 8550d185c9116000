"""Recognising checkpoint files by name and first bytes, without importing torch or numpy.

The CLI imports this at start; the format modules (and torch, ~1 s; numpy, ~0.1 s) are imported
only when a file of their kind is really read or written."""

from __future__ import annotations

import os
import stat

_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _head(path: str, size: int = 4) -> bytes | None:
    """The first bytes of a regular file; None for anything else (a FIFO is never waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.pread(fd, size, 0)
    except OSError:
        return None
    finally:
        os.close(fd)


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # PROTO opcode, first byte of every pickle torch.save ever wrote


def sniff_torch(path: str) -> bool:
    """True for a ``.pt``/``.pth``/``.bin``/``.ckpt`` file that starts like a zip or a pickle."""
    path = os.fspath(path)
    if not path.lower().endswith(_SUFFIXES):
        return False
    head = _head(path)
    return head is not None and (head == _ZIP_MAGIC or head[:1] == _PICKLE_PROTO)


_NPZ_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # an archive with members / an empty archive


def sniff_npz(path: str) -> bool:
    """True for a ``.npz`` file that starts with a zip signature."""
    path = os.fspath(path)
    if not path.lower().endswith(".npz"):
        return False
    return _head(path) in _NPZ_MAGICS
