"""Recognising PyTorch checkpoint files without importing torch (which takes a second)."""

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
