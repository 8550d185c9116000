"""Base fingerprints: one id for the weights of a model, however they are sharded or stored.

The fingerprint is the BLAKE3 of one line per tensor (``name dtype shape chunk-ids``, sorted by
name) over every safetensors file of the model. The chunk ids are the store's object ids, so the
fingerprint of a revision is read from its manifests without touching a weight, and the
fingerprint of a directory on disk (a contributor's checkout) is the same value computed by
hashing the files. ``modelgit train`` records it, ``contribute`` and ``review`` compare it.
"""

from __future__ import annotations

import os

import blake3

from .dtypes import DTYPES
from .errors import UsageError
from .store.chunking import CHUNK_BYTES, chunk_layout
from .store.ids import format_shape, object_id

__all__ = ["fingerprint_dir", "fingerprint_rev", "tensor_infos_dir", "tensor_infos_rev"]

_DOMAIN = b"modelgit-base-fingerprint-v1\n"


def _digest(lines: list[str]) -> str:
    hasher = blake3.blake3(_DOMAIN)
    for line in sorted(lines):
        hasher.update(line.encode() + b"\n")
    return hasher.hexdigest()


def _weight_files(model_dir: str) -> list[str]:
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    if not files:
        raise UsageError(f"{model_dir!r} holds no .safetensors weights: a base model directory "
                         "needs them (save with save_pretrained(..., safe_serialization=True))")
    return [os.path.join(model_dir, f) for f in files]


def fingerprint_dir(model_dir: str) -> str:
    """The fingerprint of the safetensors weights in ``model_dir`` (hashes every byte once)."""
    from .formats.safetensors_format import open_safetensors

    lines, buffer = [], bytearray(CHUNK_BYTES)  # every chunk fits; read into one buffer in turn
    for path in _weight_files(model_dir):
        reader = open_safetensors(path)
        try:
            for entry in reader.entries():
                ids = []
                for c in chunk_layout(DTYPES[entry.dtype].itemsize, entry.shape):
                    view = memoryview(buffer)[:c.stop - c.start]
                    reader.read_into(entry.name, c.start, view)
                    ids.append(object_id(entry.dtype, c.shape, view))
                lines.append(f"{entry.name} {entry.dtype} {format_shape(entry.shape)} {','.join(ids)}")
            reader.check_unchanged()  # else the fingerprint may be of no version of the file
        finally:
            reader.close()
    return _digest(lines)


def _rev_records(repo, rev: str, model_path: str):
    manifests = repo.tracked_manifests(rev, [model_path])
    records = [r for path, m in sorted(manifests.items()) if path.endswith(".safetensors")
               for r in m.files]
    if not records:
        raise UsageError(f"revision {rev} has no modelgit-tracked safetensors weights under "
                         f"{model_path}/: is this a modelgit model repository (modelgit.yaml)?")
    return records


def fingerprint_rev(repo, rev: str, model_path: str) -> str:
    """The fingerprint of the weights under ``model_path`` in revision ``rev`` (manifests only)."""
    return _digest([f"{t.name} {t.dtype} {format_shape(t.shape)} {','.join(t.chunks)}"
                    for r in _rev_records(repo, rev, model_path) for t in r.tensors])


def tensor_infos_rev(repo, rev: str, model_path: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} of the base weights in ``rev``."""
    return {t.name: (t.dtype, tuple(t.shape)) for r in _rev_records(repo, rev, model_path)
            for t in r.tensors}


def tensor_infos_dir(model_dir: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} of the safetensors weights in ``model_dir`` (headers only)."""
    from .formats.safetensors_format import open_safetensors

    infos = {}
    for path in _weight_files(model_dir):
        reader = open_safetensors(path)
        try:
            infos.update({e.name: (e.dtype, tuple(e.shape)) for e in reader.entries()})
        finally:
            reader.close()
    return infos
