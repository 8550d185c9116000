"""Where the tensors of a merge come from: checkpoints, revisions of a repository, PEFT adapters.

A source is lazy: it lists its tensors (name, dtype, shape) without reading them and loads one
tensor at a time, so that the engine holds at most one tensor per input in memory.

Specs understood by :func:`open_source`:

* a path to a checkpoint file or directory (safetensors, sharded Hugging Face directory, torch,
  npz);
* ``PATH@REV`` — the file or directory ``PATH`` as it is at revision ``REV`` of the modelgit
  repository we are in, read from the tensor store (nothing is checked out);
* ``BASE+ADAPTER`` — a base model with a PEFT LoRA adapter applied (``W + scale · B A``), the
  mergekit spelling; ``ADAPTER`` alone, when its adapter_config.json names a local base.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import FormatError, UsageError
from ..formats import detect_format
from ..tensor_math import to_torch

__all__ = ["Source", "TensorInfo", "open_source", "CheckpointSource", "StoreSource"]


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


class Source(Protocol):
    label: str

    def tensors(self) -> dict[str, TensorInfo]: ...
    def load(self, name: str) -> torch.Tensor: ...
    def identity(self) -> str: ...
    def close(self) -> None: ...


class CheckpointSource:
    """Tensor files on disk: one checkpoint file, or every tensor file of a directory."""

    def __init__(self, path: str):
        self.label = path
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(root, name) for root, _dirs, names in os.walk(path) for name in names)
        self._readers, self._where, self._infos = [], {}, {}
        for file in files:
            fmt = detect_format(file)
            if fmt is None:
                continue
            reader = fmt.open(file)
            self._readers.append(reader)
            for entry in reader.entries():
                if entry.name in self._where:
                    raise FormatError(f"{path}: tensor {entry.name!r} is in both "
                                      f"{self._where[entry.name].path} and {file}")
                self._where[entry.name] = reader
                self._infos[entry.name] = TensorInfo(entry.dtype, entry.shape)
        if not self._infos:
            raise UsageError(f"{path}: no tensors found (expected a safetensors/torch/npz file or a "
                             "directory holding them)")

    def tensors(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def load(self, name: str) -> torch.Tensor:
        info = self._infos[name]
        reader = self._where[name]
        data = reader.data(name)
        tensor = to_torch(data, info.dtype, info.shape)  # a copy: the mapping can go
        release = getattr(reader, "release", None)
        if release is not None:
            release(name, 0, len(data))  # else every input's pages stay resident: RSS = model size
        return tensor

    def identity(self) -> str:
        """Content id of the checkpoint: a hash over every tensor's object id (blake3)."""
        from ..store.ids import object_id

        import blake3

        digest = blake3.blake3()
        for name in sorted(self._infos):
            info, reader = self._infos[name], self._where[name]
            data = reader.data(name)
            digest.update(f"{name}\0{object_id(info.dtype, info.shape, data)}\n".encode())
            if hasattr(reader, "release"):
                reader.release(name, 0, len(data))
        return digest.hexdigest()

    def close(self) -> None:
        for reader in self._readers:
            reader.close()


class StoreSource:
    """A checkpoint of a manifest, read chunk by chunk from a store."""

    def __init__(self, store, manifest, label: str):
        self.label = label
        self._store = store
        self._records = {}
        for record in manifest.files:
            if record.format == "blob":
                continue
            for tensor in record.tensors:
                self._records[tensor.name] = tensor
        self._manifest = manifest

    def tensors(self) -> dict[str, TensorInfo]:
        return {n: TensorInfo(t.dtype, t.shape) for n, t in self._records.items()}

    def load(self, name: str) -> torch.Tensor:
        record = self._records[name]
        raw = b"".join(self._store.get(oid) for oid in record.chunks)
        return to_torch(raw, record.dtype, record.shape)

    def identity(self) -> str:
        import blake3

        return blake3.blake3(self._manifest.dumps()).hexdigest()

    def close(self) -> None:
        pass


class AdapterSource:
    """A base source with a PEFT LoRA adapter merged in on the fly (see ``adapters`` module)."""

    def __init__(self, base: Source, adapter_dir: str):
        from .lora import load_adapter

        self.label = f"{base.label}+{adapter_dir}"
        self._base = base
        self._adapter = load_adapter(adapter_dir, base.tensors())

    def tensors(self) -> dict[str, TensorInfo]:
        return self._base.tensors()

    def load(self, name: str) -> torch.Tensor:
        return self._adapter.apply(name, self._base.load(name))

    def identity(self) -> str:
        import blake3

        return blake3.blake3(f"{self._base.identity()}+{self._adapter.identity()}".encode()).hexdigest()

    def close(self) -> None:
        self._base.close()


def _revision_source(spec: str) -> Source:
    from ..git.repo import find_repo

    path, rev = spec.rsplit("@", 1)
    repo = find_repo(".")
    rel = os.path.relpath(os.path.abspath(path), repo.root).replace(os.sep, "/")
    manifests = repo.tracked_manifests(rev, [rel])
    if not manifests:
        raise UsageError(f"{spec}: no modelgit-tracked checkpoint at {rel} in revision {rev}")
    store = repo.store()
    from ..manifest import FileRecord, Manifest

    records: list[FileRecord] = []
    for manifest in manifests.values():
        records.extend(manifest.files)
    merged = Manifest(tuple(FileRecord(f"{i}/{r.path}", r.format, r.options, r.tensors)
                            for i, r in enumerate(records)), "dir")
    missing = {oid for oid in merged.object_ids() if not store.has(oid)}
    if missing:
        from ..git.transfer import fetch_objects, remotes_for_fetch

        fetch_objects(store, remotes_for_fetch(repo), missing, progress=False, context=spec)
    return StoreSource(store, merged, spec)


def open_source(spec: str) -> Source:
    """Open a merge input (see the module docstring for the accepted specs).

    Raises:
        UsageError: the spec names nothing that exists.
    """
    if "+" in spec and not os.path.exists(spec):
        base_spec, adapter = spec.rsplit("+", 1)
        return AdapterSource(open_source(base_spec), adapter)
    if os.path.exists(spec):
        if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "adapter_config.json")):
            with open(os.path.join(spec, "adapter_config.json")) as handle:
                base = json.load(handle).get("base_model_name_or_path")
            if base and os.path.exists(base):
                return AdapterSource(open_source(base), spec)
            raise UsageError(f"{spec} is a PEFT adapter; name its base as BASE+{spec} "
                             f"(its config says {base!r}, which is not a local path)")
        return CheckpointSource(spec)
    if "@" in spec:
        return _revision_source(spec)
    raise UsageError(f"{spec}: no such file or directory (nor PATH@REV of this repository)")
