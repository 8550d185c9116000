"""Checkpoint file formats (layer ``formats/``): safetensors, PyTorch state dicts, numpy npz.

Files of no tensor format (configs, tokenizers, READMEs) are stored as byte blobs by the
checkpoint layer; ``detect_format`` returns ``None`` for them.
"""

from __future__ import annotations

from .base import FORMATS, CheckpointReader, Format, TensorEntry, register_format
import importlib

from ._sniff import sniff_npz, sniff_torch
from .safetensors_format import FORMAT as SAFETENSORS


def _lazy(module: str, name: str):
    # torch (~1 s) and numpy (~0.1 s) are imported only when a file of theirs is read or written
    def call(*args, **kwargs):
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)(*args, **kwargs)

    return call


TORCH = Format("torch", _lazy("torch_pt", "open_torch"), _lazy("torch_pt", "write_torch"), sniff_torch)
NPZ = Format("npz", _lazy("npz", "open_npz"), _lazy("npz", "write_npz"), sniff_npz)

__all__ = ["FORMATS", "CheckpointReader", "Format", "TensorEntry", "detect_format", "get_format"]

for _fmt in (SAFETENSORS, TORCH, NPZ):
    register_format(_fmt)


def detect_format(path: str) -> Format | None:
    """The tensor format of the file at ``path``, or None for a plain (blob) file."""
    for fmt in FORMATS.values():
        if fmt.sniff(path):
            return fmt
    return None


def get_format(name: str) -> Format:
    from ..errors import ManifestError

    try:
        return FORMATS[name]
    except KeyError:
        raise ManifestError(f"unknown checkpoint format {name!r} (known: "
                            f"{', '.join(sorted(FORMATS))}); upgrade modelgit") from None
