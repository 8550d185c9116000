"""Streaming writer of (sharded) safetensors checkpoints in the Hugging Face layout.

The header of each shard is known before any tensor is computed (names, dtypes and shapes come
from the merge plan), so every tensor has a known place in its shard and is written there with
``pwrite`` when it is ready, by whichever thread computed it. The output is
written in a temporary directory next to it (named after this process, see
:mod:`modelgit._outputs`: a merge killed midway leaves one that the next merge in that directory
removes), fsynced and put in place: renamed over an absent or empty directory; written into a
non-empty one only with ``force``, and then only the files of the output are replaced and those
of an earlier merge removed (:func:`earlier_output`), other files are kept. Headers are canonical
(tensors in plan order, compact JSON, ``__metadata__`` first), so the same plan and the same
tensor bytes give the same files, whatever order the tensors were written in.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
from dataclasses import dataclass

from .._outputs import check_output, install_directory, remove, remove_stale_temporaries, temporary_path
from .._files import reserve_space, sync_path, write_all
from ..dtypes import DTYPES

__all__ = ["PlannedTensor", "ShardedWriter", "DEFAULT_SHARD_BYTES", "MARKER", "earlier_output",
           "prepare_output", "finish_output"]

DEFAULT_SHARD_BYTES = 5 * 1000**3  # the Hugging Face default ("5GB")
MARKER = "modelgit_merge.json"  # a merge's provenance, with the list of files it wrote
# the weights of a Hugging Face directory: with ``force`` an output replaces all of them, since a
# stale model.safetensors beside a new sharded index would be loaded instead of it
_WEIGHT_FILE = re.compile(r"^(model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|"
                          r"adapter_model\.(safetensors|bin)|adapter_config\.json)$")


def earlier_output(out_dir: str) -> set[str]:
    """Names in ``out_dir`` that an earlier merge wrote (its marker and the files it lists)."""
    try:
        with open(os.path.join(out_dir, MARKER), encoding="utf-8") as handle:
            files = json.load(handle).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    names = {name for name in files if isinstance(name, str) and "/" not in name
             and name not in ("", ".", "..")}
    return names | {MARKER}


def prepare_output(out_dir: str, force: bool) -> str:
    """Check ``out_dir`` (see :func:`modelgit._outputs.check_output`), clear what killed
    merges left beside it, and return a fresh temporary directory to write the output in."""
    check_output(out_dir, "directory", force)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent, os.path.basename(os.path.abspath(out_dir)))
    tmp = temporary_path(out_dir)
    os.makedirs(tmp)
    return tmp


def finish_output(tmp: str, out_dir: str) -> None:
    """Put the finished output ``tmp`` in place: it replaces the files of the same names and
    the weights and files of an earlier merge; any other file in ``out_dir`` is kept."""
    sync_path(tmp)
    earlier = earlier_output(out_dir)
    install_directory(tmp, out_dir, owned=lambda name: name in earlier or bool(_WEIGHT_FILE.match(name)))
    sync_path(os.path.dirname(os.path.abspath(out_dir)))


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
    """Write ``tensors`` into ``out_dir`` as one or more safetensors shards, in any order.

    Every tensor's place in its shard is known from the plan, so tensors may be written by
    several threads at once and in any order (``pwrite`` at their offsets); each must be
    written exactly once, whole. Shard files are created, with their headers and their disk
    space reserved (a full disk fails here, before anything is computed), when the writer is.
    """

    def __init__(self, out_dir: str, tensors: list[PlannedTensor], metadata: dict[str, str],
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES, extra_files: dict[str, bytes] | None = None,
                 force: bool = False):
        """
        Raises:
            UsageError: ``out_dir`` is not a directory the output may go to (see
                :func:`prepare_output`; a non-empty one needs ``force``).
            OSError: the disk has no room for the shards.
        """
        self.out_dir = out_dir
        self.tmp = prepare_output(out_dir, force)
        self.metadata = dict(sorted(metadata.items()))
        self.shards = _shard_plan(tensors, max_shard_bytes)
        self.extra_files = extra_files or {}
        count = len(self.shards)
        self.names = ["model.safetensors"] if count == 1 else \
            [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        self._order = [(i, t) for i, shard in enumerate(self.shards) for t in shard]
        self._place: dict[str, tuple[int, int, PlannedTensor]] = {}  # name -> (shard, offset, tensor)
        self._lock = threading.Lock()
        self._started: set[str] = set()
        self._done: set[str] = set()
        self._fds: list[int] = []
        self._header_sizes: list[int] = []
        try:
            for index in range(count):
                self._open_shard(index)
        except BaseException:
            self.abort()
            raise

    def _header(self, index: int) -> bytes:
        header: dict = {"__metadata__": self.metadata}
        offset = 0
        for t in self.shards[index]:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)  # 8-byte aligned data, as the reference writer does
        return struct.pack("<Q", len(text)) + text

    def _open_shard(self, index: int) -> None:
        header = self._header(index)
        fd = os.open(os.path.join(self.tmp, self.names[index]),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        self._fds.append(fd)
        self._header_sizes.append(len(header))
        data = sum(t.nbytes for t in self.shards[index])
        reserve_space(fd, len(header) + data)
        write_all(fd, header, 0)
        offset = len(header)
        for t in self.shards[index]:
            self._place[t.name] = (index, offset, t)
            offset += t.nbytes

    def set_metadata(self, metadata: dict[str, str]) -> None:
        """Replace the ``__metadata__`` of every shard (before :meth:`finish`), e.g. with
        provenance known only once the inputs have been read. The headers must keep their
        length (the tensors are already in place): same keys, values of the same lengths.

        Raises:
            ValueError: a header would change length.
        """
        self.metadata = dict(sorted(metadata.items()))
        headers = [self._header(index) for index in range(len(self.shards))]
        for index, header in enumerate(headers):
            if len(header) != self._header_sizes[index]:
                raise ValueError(f"the header of {self.names[index]} would go from "
                                 f"{self._header_sizes[index]} to {len(header)} bytes")
        for index, header in enumerate(headers):
            write_all(self._fds[index], header, 0)

    def write(self, name: str, data) -> None:
        """Write tensor ``name`` whole, as raw little-endian bytes."""
        self.write_parts(name, [data])

    def write_parts(self, name: str, parts) -> None:
        """Write tensor ``name`` from consecutive pieces of its raw bytes (thread-safe: other
        tensors may be written at the same time).

        Raises:
            ValueError: no such tensor, it was written already, or the pieces do not add up to
                its size (the shard is then incomplete: ``abort``).
        """
        with self._lock:
            if name not in self._place:
                raise ValueError(f"writer has no tensor {name}")
            if name in self._started:
                raise ValueError(f"writer got {name} twice")
            self._started.add(name)
        index, offset, planned = self._place[name]
        fd, written = self._fds[index], 0
        for data in parts:
            size = memoryview(data).nbytes
            if written + size > planned.nbytes:
                written += size
                break
            write_all(fd, data, offset + written)
            written += size
        if written != planned.nbytes:
            raise ValueError(f"writer expected {planned.nbytes} bytes of {planned.name}, got "
                             f"{'more' if written > planned.nbytes else written}")
        with self._lock:
            self._done.add(name)

    def finish(self) -> str:
        if len(self._done) != len(self._order):
            missing = [t.name for _, t in self._order if t.name not in self._done]
            raise ValueError(f"writer got {len(self._done)} of {len(self._order)} tensors "
                             f"(missing {missing[:3]})")
        self._close_shards(sync=True)
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
        finish_output(self.tmp, self.out_dir)
        return self.out_dir

    def _close_shards(self, sync: bool) -> None:
        fds, self._fds = self._fds, []
        try:
            for fd in fds:
                if sync:
                    os.fsync(fd)
        finally:
            for fd in fds:
                os.close(fd)

    def file_names(self) -> list[str]:
        """Every file the output will hold (shards, index, extra files), sorted."""
        index = ["model.safetensors.index.json"] if len(self.shards) > 1 else []
        return sorted({*self.names, *index, *self.extra_files})

    def abort(self) -> None:
        self._close_shards(sync=False)
        remove(self.tmp)
