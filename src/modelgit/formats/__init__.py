"""Checkpoint file formats (layer ``formats/``): safetensors, PyTorch state dicts, numpy npz.

Files of no tensor format (configs, tokenizers, READMEs) are stored as byte blobs by the
checkpoint layer; ``detect_format`` returns ``None`` for them.
"""

from __future__ import annotations

from .base import FORMATS, CheckpointReader, Format, TensorEntry, register_format
from ._torch_sniff import sniff_torch
from .npz import FORMAT as NPZ
from .safetensors_format import FORMAT as SAFETENSORS


def _torch_call(name: str):
    # torch takes a second to import: only pay for it when a torch file is really read or written
    def call(*args, **kwargs):
        from . import torch_pt

        return getattr(torch_pt, name)(*args, **kwargs)

    return call


TORCH = Format("torch", _torch_call("open_torch"), _torch_call("write_torch"), sniff_torch)

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
