"""Where the tensors of a merge come from: checkpoints, revisions of a repository, PEFT adapters.

A source is lazy: it lists its tensors (name, dtype, shape) without reading them, and loads one
tensor at a time (``load``) or hands out a :class:`~modelgit.merge.base.LazyTensor` that reads a
range of a tensor's elements at a time (``open_tensor``: read straight from the file for
safetensors and torch, so a streamed merge holds blocks of its inputs, not whole tensors).

Specs understood by :func:`open_source`:

* a path to a checkpoint file or directory (safetensors, sharded Hugging Face directory, torch,
  npz);
* ``PATH@REV`` — the file or directory ``PATH`` as it is at revision ``REV`` of the modelgit
  repository we are in, read from the tensor store (nothing is checked out);
* ``BASE+ADAPTER`` — a base model with a PEFT LoRA adapter applied (``W + scale · B A``), the
  mergekit spelling; ``ADAPTER`` alone, when its adapter_config.json names a local base.

Opened with a shared ``opened`` dict, every spec is opened once: ``BASE+A1``, ``BASE+A2`` and
``BASE`` itself then read (and hash) one base source, and a tensor that an adapter leaves alone
is the base's own tensor (same :attr:`~modelgit.merge.base.LazyTensor.key`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..dtypes import DTYPES
from ..errors import FormatError, UsageError
from ..formats import detect_format
from ..store.ids import object_hasher, object_id
from ..tensor_math import to_torch
from .base import LazyTensor

__all__ = ["Source", "TensorInfo", "open_source", "lazy_tensor", "CheckpointSource", "StoreSource",
           "AdapterSource"]


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
    # optional: def open_tensor(self, name: str) -> LazyTensor (see lazy_tensor)


def _torch_dtype(dtype: str) -> torch.dtype:
    return getattr(torch, DTYPES[dtype].torch_name)


class WholeTensor:
    """A LazyTensor over ``load()``: loaded whole at the first read, kept until dropped."""

    def __init__(self, load, info: TensorInfo, key):
        self.shape, self.dtype, self.key = tuple(info.shape), _torch_dtype(info.dtype), key
        self._load = load
        self._flat = None

    def flat(self, start: int, stop: int) -> torch.Tensor:
        if self._flat is None:
            self._flat = self._load().reshape(-1)  # (numel,)
        return self._flat[start:stop]


class RangedTensor:
    """A LazyTensor over a file reader with ``read_into``: each range is read from the file
    (``pread``; nothing stays mapped, and a file truncated meanwhile gives an error, not SIGBUS)
    into a buffer this object reuses: a range is valid until the next ``flat`` call.

    With ``on_read``, a tensor read front to back (the ranges in order, each starting where the
    last one stopped) is hashed as it is read, and ``on_read(name, object_id)`` is called at
    its end: the merge's provenance then needs no second read of the file.
    """

    def __init__(self, reader, name: str, info: TensorInfo, key, on_read=None):
        self.shape, self.dtype, self.key = tuple(info.shape), _torch_dtype(info.dtype), key
        self._reader, self._name = reader, name
        self._itemsize = DTYPES[info.dtype].itemsize
        self._buffer = torch.empty(0, dtype=torch.uint8)
        self._hasher = object_hasher(info.dtype, self.shape) if on_read is not None else None
        self._hashed, self._on_read = 0, on_read
        self._numel = math.prod(self.shape)

    def flat(self, start: int, stop: int) -> torch.Tensor:
        size = (stop - start) * self._itemsize
        if self._buffer.numel() < size:
            self._buffer = torch.empty(size, dtype=torch.uint8)
        out = self._buffer[:size]
        self._reader.read_into(self._name, start * self._itemsize, out.numpy())
        if self._hasher is not None:
            if start != self._hashed:  # not front to back: the provenance reads it again
                self._hasher = None
            else:
                self._hasher.update(out.numpy())
                self._hashed = stop
                if stop == self._numel:
                    self._on_read(self._name, self._hasher.hexdigest())
                    self._hasher = None
        return out.view(self.dtype)  # (stop - start,)


_HASH_PIECE = 8 << 20  # bytes read at a time to hash a tensor the merge did not read whole


def _read_id(reader, name: str, info: TensorInfo, buffer: np.ndarray) -> str:
    """The object id of tensor ``name``, read ``buffer``'s size at a time."""
    hasher = object_hasher(info.dtype, info.shape)
    total = math.prod(info.shape) * DTYPES[info.dtype].itemsize
    for start in range(0, total, buffer.size):
        piece = buffer[: min(buffer.size, total - start)]
        reader.read_into(name, start, piece)
        hasher.update(piece)
    return hasher.hexdigest()


def lazy_tensor(source: Source, name: str) -> LazyTensor:
    """Tensor ``name`` of ``source``, read on demand (whole, for a source without ``open_tensor``)."""
    opener = getattr(source, "open_tensor", None)
    if opener is not None:
        return opener(name)
    return WholeTensor(lambda: source.load(name), source.tensors()[name], (source, name))


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
        self._identity: str | None = None
        self._ids: dict[str, str] = {}  # object ids of the tensors read whole so far

    def tensors(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def open_tensor(self, name: str) -> LazyTensor:
        reader, info = self._where[name], self._infos[name]
        if hasattr(reader, "read_into"):  # ranges cost only what they read
            on_read = None if name in self._ids else self._ids.__setitem__
            return RangedTensor(reader, name, info, (self, name), on_read)
        return WholeTensor(lambda: self.load(name), info, (self, name))

    def load(self, name: str) -> torch.Tensor:
        info = self._infos[name]
        data = self._where[name].data(name)
        if name not in self._ids:
            self._ids[name] = object_id(info.dtype, info.shape, data)
        return to_torch(data, info.dtype, info.shape)

    def identity(self) -> str:
        """Content id of the checkpoint: a hash over every tensor's object id (blake3).

        The ids of tensors already read whole (by ``load``, or front to back through
        ``open_tensor``) are those of the bytes read then; the others are read now, a piece at
        a time into one buffer."""
        if self._identity is None:
            self._identity = self._hash()
        return self._identity

    def _hash(self) -> str:
        import blake3

        digest = blake3.blake3()
        buffer = None
        for name in sorted(self._infos):
            if name not in self._ids:
                info, reader = self._infos[name], self._where[name]
                if hasattr(reader, "read_into"):
                    buffer = buffer if buffer is not None else np.empty(_HASH_PIECE, dtype=np.uint8)
                    self._ids[name] = _read_id(reader, name, info, buffer)
                else:
                    self._ids[name] = object_id(info.dtype, info.shape, reader.data(name))
            digest.update(f"{name}\0{self._ids[name]}\n".encode())
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

    def open_tensor(self, name: str) -> LazyTensor:
        record = self._records[name]
        return WholeTensor(lambda: self.load(name), TensorInfo(record.dtype, record.shape), (self, name))

    def identity(self) -> str:
        import blake3

        return blake3.blake3(self._manifest.dumps()).hexdigest()

    def close(self) -> None:
        pass


class AdapterSource:
    """A base source with a PEFT LoRA adapter merged in on the fly (see the ``lora`` module).

    With ``owns_base`` false the base is shared (see :func:`open_source`) and ``close`` leaves it
    open for its owner to close.
    """

    def __init__(self, base: Source, adapter_dir: str, owns_base: bool = True):
        from ..adapters.loading import read_pooling
        from .lora import load_adapter
        from .lora_config import read_lora_config
        from .task_heads import labels_of, task_model
        from .vocabulary import local_directory

        self.label = f"{base.label}+{adapter_dir}"
        self._base = base
        self._owns_base = owns_base
        #: the task model (e.g. a sequence classifier) the adapter was trained on, if any
        self.task = task_model(local_directory(base.label), read_lora_config(adapter_dir)[0])
        self._adapter = load_adapter(adapter_dir, base.tensors(), self.task.prefix if self.task else None)
        self._changed = {*self._adapter.targets(), *self._adapter.saved}
        #: names of the task-head tensors the adapter brings (the base has none of them)
        self.heads = tuple(sorted(self._adapter.heads))
        #: the classes of the adapter's head (its labels.json), if it recorded them
        self.labels = labels_of(adapter_dir) if self.heads or self.task else None
        #: how the head reads the encoder (labels.json): ``mean`` brings the constant layer and
        #: pooler of :mod:`modelgit.adapters.pooling`, merged as heads
        self.pooling = read_pooling(adapter_dir) if self.task else "cls"
        self._heads = dict(self._adapter.heads)
        if self.pooling == "mean":
            _check_pooler_untouched(adapter_dir, self._changed)
            self._heads.update(_mean_pooling_heads(local_directory(base.label), adapter_dir, self.task))
            self.heads = tuple(sorted(self._heads))

    def tensors(self) -> dict[str, TensorInfo]:
        heads = {name: TensorInfo(_dtype_name(t), tuple(t.shape)) for name, t in self._heads.items()}
        return {**self._base.tensors(), **heads}

    def load(self, name: str) -> torch.Tensor:
        if name in self._heads:
            return self._heads[name]
        return self._adapter.apply(name, self._base.load(name))

    def open_tensor(self, name: str) -> LazyTensor:
        if name in self._heads:
            return WholeTensor(lambda: self.load(name), self.tensors()[name], (self, name))
        if name not in self._changed:  # the base's own tensor, and its key: see open_source
            return lazy_tensor(self._base, name)
        return WholeTensor(lambda: self.load(name), self._base.tensors()[name], (self, name))

    def identity(self) -> str:
        import blake3

        return blake3.blake3(f"{self._base.identity()}+{self._adapter.identity()}".encode()).hexdigest()

    def close(self) -> None:
        if self._owns_base:
            self._base.close()


def _check_pooler_untouched(adapter_dir: str, changed) -> None:
    """A mean-pooled classifier's pooler is the constant one (:mod:`modelgit.adapters.pooling`):
    an adapter that changes it would be evaluated with its own and released with the constant.

    Raises:
        UsageError: the adapter changes a pooler tensor.
    """
    touched = sorted(n for n in changed if "pooler" in n.split("."))
    if touched:
        raise UsageError(f"{adapter_dir}: a mean-pooled classifier adapter (labels.json \"pooling\": "
                         f"\"mean\") changes the pooler ({touched[0]}), which mean pooling fixes: "
                         "train it again with `modelgit train --classifier probe`")


def _mean_pooling_heads(base_dir: str | None, adapter_dir: str, task) -> dict[str, torch.Tensor]:
    """The constant layer and pooler a mean-pooled classifier adapter stands for, by their task
    model names (:func:`modelgit.adapters.pooling.mean_pooling_tensors`), on the base's config.

    Raises:
        UsageError: the base cannot take mean pooling (see ``mean_pooling_problem``).
    """
    from ..adapters.pooling import mean_pooling_problem, mean_pooling_tensors
    from .task_heads import model_config

    config = model_config(base_dir) if base_dir else {}
    problem = mean_pooling_problem(config) if config else "the base has no readable config.json"
    if problem is not None:
        raise UsageError(f"{adapter_dir}: a mean-pooled classifier adapter: {problem}")
    return mean_pooling_tensors(config, task.prefix)


def _dtype_name(tensor: torch.Tensor) -> str:
    """The safetensors dtype name of a torch tensor."""
    for name, dtype in DTYPES.items():
        if getattr(torch, dtype.torch_name, None) == tensor.dtype:
            return name
    raise FormatError(f"a tensor of dtype {tensor.dtype} cannot be merged")


def _revision_source(spec: str) -> Source:
    from ..git.repo import find_repo

    path, rev = spec.rsplit("@", 1)
    repo = find_repo(".")
    commit = repo.resolve(rev, f"revision in {spec!r}")  # names the closest branch or tag
    rel = os.path.relpath(os.path.abspath(path), repo.root).replace(os.sep, "/")
    manifests = repo.tracked_manifests(commit, [rel])
    if not manifests:
        raise UsageError(f"{spec}: no modelgit-tracked checkpoint at {rel} in revision {rev}")
    store = repo.store()
    from ..manifest import FileRecord, Manifest

    records: list[FileRecord] = []
    for manifest in manifests.values():
        records.extend(manifest.files)
    merged = Manifest(tuple(FileRecord(f"{i}/{r.path}", r.format, r.options, r.tensors)
                            for i, r in enumerate(records)), "dir")
    from ..git.transfer import fetch_missing

    fetch_missing(repo, store, merged.object_ids(), spec)
    return StoreSource(store, merged, spec)


def open_source(spec: str, opened: dict[str, Source] | None = None) -> Source:
    """Open a merge input (see the module docstring for the accepted specs).

    Args:
        spec: the input.
        opened: sources already opened, by spec: a spec (or the base of a ``BASE+ADAPTER`` spec)
            found there is reused, and every newly opened source is added. The caller then
            closes each source of ``opened`` once; adapters opened this way leave their base open.

    Raises:
        UsageError: the spec names nothing that exists.
    """
    if opened is None:
        return _open(spec, None)
    key = os.path.realpath(spec) if os.path.exists(spec) else spec
    if key not in opened:
        opened[key] = _open(spec, opened)
    return opened[key]


def _open(spec: str, opened: dict[str, Source] | None) -> Source:
    owns_base = opened is None
    if "+" in spec and not os.path.exists(spec):
        base_spec, adapter = spec.rsplit("+", 1)
        return AdapterSource(open_source(base_spec, opened), adapter, owns_base)
    if os.path.exists(spec):
        if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "adapter_config.json")):
            from .lora_config import read_lora_config

            base = read_lora_config(spec)[0].get("base_model_name_or_path")
            base = base if isinstance(base, str) else None
            if base and os.path.exists(base):
                return AdapterSource(open_source(base, opened), spec, owns_base)
            raise UsageError(f"{spec} is a PEFT adapter; name its base as BASE+{spec} "
                             f"(its config says {base!r}, which is not a local path)")
        return CheckpointSource(spec)
    if "@" in spec:
        return _revision_source(spec)
    raise UsageError(f"{spec}: no such file or directory (nor PATH@REV of this repository)")
