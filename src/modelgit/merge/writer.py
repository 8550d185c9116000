"""Streaming writer of (sharded) safetensors checkpoints in the Hugging Face layout.

The header of each shard is known before any tensor is computed (names, dtypes and shapes come
from the merge plan), so each shard is written front to back as tensors arrive, and the whole
output directory appears atomically (written under a temporary name, fsynced, renamed). Headers
are canonical (tensors in plan order, compact JSON, ``__metadata__`` first), so the same plan and
the same tensor bytes give the same files.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from dataclasses import dataclass

from ..dtypes import DTYPES

__all__ = ["PlannedTensor", "ShardedWriter", "DEFAULT_SHARD_BYTES"]

DEFAULT_SHARD_BYTES = 5 * 1000**3  # the Hugging Face default ("5GB")


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype].itemsize
        for d in self.shape:
            n *= d
        return n


def _shard_plan(tensors: list[PlannedTensor], max_bytes: int) -> list[list[PlannedTensor]]:
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


class ShardedWriter:
    """Write ``tensors`` (in order) into ``out_dir`` as one or more safetensors shards."""

    def __init__(self, out_dir: str, tensors: list[PlannedTensor], metadata: dict[str, str],
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES, extra_files: dict[str, bytes] | None = None):
        self.out_dir = out_dir
        parent = os.path.dirname(os.path.abspath(out_dir))
        os.makedirs(parent, exist_ok=True)
        self.tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.modelgit-tmp-{uuid.uuid4().hex[:8]}")
        os.makedirs(self.tmp)
        self.metadata = dict(sorted(metadata.items()))
        self.shards = _shard_plan(tensors, max_shard_bytes)
        self.extra_files = extra_files or {}
        count = len(self.shards)
        self.names = ["model.safetensors"] if count == 1 else \
            [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        self._order = [(i, t) for i, shard in enumerate(self.shards) for t in shard]
        self._next = 0
        self._handle = None
        self._shard = -1

    def _open_shard(self, index: int) -> None:
        if self._handle is not None:
            self._close_shard()
        header: dict = {"__metadata__": self.metadata}
        offset = 0
        for t in self.shards[index]:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)  # 8-byte aligned data, as the reference writer does
        self._handle = open(os.path.join(self.tmp, self.names[index]), "wb")
        self._handle.write(struct.pack("<Q", len(text)) + text)
        self._shard = index

    def _close_shard(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None

    def write(self, name: str, data) -> None:
        """Append the next tensor (must come in plan order) as raw little-endian bytes."""
        index, planned = self._order[self._next]
        if name != planned.name or len(data) != planned.nbytes:
            raise ValueError(f"writer expected {planned.name} ({planned.nbytes} bytes), got {name} "
                             f"({len(data)} bytes)")
        self.write_parts(name, [data])

    def write_parts(self, name: str, parts) -> None:
        """Append the next tensor (in plan order) from consecutive pieces of its raw bytes.

        Raises:
            ValueError: another tensor was due, or the pieces do not add up to its size (the
                shard is then incomplete: ``abort``).
        """
        index, planned = self._order[self._next]
        if name != planned.name:
            raise ValueError(f"writer expected {planned.name}, got {name}")
        if index != self._shard:
            self._open_shard(index)
        written = 0
        for data in parts:
            written += len(data)
            if written > planned.nbytes:
                break
            self._handle.write(data)
        if written != planned.nbytes:
            raise ValueError(f"writer expected {planned.nbytes} bytes of {planned.name}, got "
                             f"{'more' if written > planned.nbytes else written}")
        self._next += 1

    def finish(self) -> str:
        if self._next != len(self._order):
            raise ValueError(f"writer got {self._next} of {len(self._order)} tensors")
        if self._handle is not None:
            self._close_shard()
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": sum(t.nbytes for _, t in self._order)},
                     "weight_map": {t.name: self.names[i] for i, t in self._order}}
            self.extra_files["model.safetensors.index.json"] = (
                json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
        for name, data in sorted(self.extra_files.items()):
            with open(os.path.join(self.tmp, name), "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        if os.path.isdir(self.out_dir):
            old = f"{self.tmp}.old"
            os.rename(self.out_dir, old)
            os.rename(self.tmp, self.out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
