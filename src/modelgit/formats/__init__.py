"""Checkpoint file formats (layer ``formats/``): safetensors, PyTorch state dicts, numpy npz.

Files of no tensor format (configs, tokenizers, READMEs) are stored as byte blobs by the
checkpoint layer; ``detect_format`` returns ``None`` for them.
"""

from __future__ import annotations

from .base import FORMATS, CheckpointReader, Format, TensorEntry, register_format
from .npz import FORMAT as NPZ
from .safetensors_format import FORMAT as SAFETENSORS
from .torch_pt import FORMAT as TORCH

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
