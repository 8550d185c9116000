"""Recognising checkpoint files by name and first bytes, without importing torch or numpy.

The CLI imports this at start; the format modules (and torch, ~1 s; numpy, ~0.1 s) are imported
only when a file of their kind is really read or written."""

from __future__ import annotations

import os

_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # PROTO opcode, first byte of every pickle torch.save ever wrote


def sniff_torch(path: str) -> bool:
    """True for a ``.pt``/``.pth``/``.bin``/``.ckpt`` file that starts like a zip or a pickle."""
    path = os.fspath(path)
    if not path.lower().endswith(_SUFFIXES):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head == _ZIP_MAGIC or head[:1] == _PICKLE_PROTO


_NPZ_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # an archive with members / an empty archive


def sniff_npz(path: str) -> bool:
    """True for a ``.npz`` file that starts with a zip signature."""
    path = os.fspath(path)
    if not path.lower().endswith(".npz"):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) in _NPZ_MAGICS
    except OSError:
        return False
