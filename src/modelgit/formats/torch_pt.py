"""PyTorch checkpoints (``torch.save`` state dicts), read without running pickled code.

Reading goes only through ``torch.load(..., weights_only=True)``, whose restricted unpickler builds
tensors, dicts and primitives and refuses every other global; a refused file raises
:class:`~modelgit.errors.UnsafeInputError`. Zip-format files (every ``torch.save`` since 1.6) are
unpickled onto the ``meta`` device and each tensor is read from its record when asked for, so
reading one tensor touches only its bytes (see :class:`TorchReader`); legacy files are loaded whole.

A checkpoint must be a dict whose values are tensors, nested dicts or JSON primitives. Nested keys
are joined with ``"."`` into tensor names. ``meta()["layout"]`` records the tree (key order, key
types, primitive values) as canonical JSON, so :func:`write_torch` rebuilds an equal dict::

    {"version": 1, "items": [[key, node], ...]}       key: str or int
    node: {"tensor": name} | {"dict": [[key, node], ...]} | {"value": json primitive}
          | {"float": "nan" | "inf" | "-inf"}         (JSON has no non-finite numbers)

Tensor bytes are the CPU tensor's memory, little-endian on every host modelgit supports.
A rebuilt file is always zip-format and equal tensor for tensor, not byte for byte.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import struct
import threading
import warnings
import zipfile
from typing import Any, Callable, Iterable

import torch

from .._reading import SourceFile
from ..dtypes import DTYPES
from ..errors import FormatError, StoreFullError, UnsafeInputError
from ._sniff import _PICKLE_PROTO, _ZIP_MAGIC, sniff_torch
from .base import Format, TensorEntry, fill_buffer

__all__ = ["FORMAT", "TorchReader", "open_torch", "write_torch", "sniff_torch"]

_LAYOUT_VERSION = 1
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_PRIMITIVES = (bool, int, float, str, type(None))
_KEY_TYPES = (str, int, bool)
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_TORCH_TO_NAME = {getattr(torch, d.torch_name): d.name for d in DTYPES.values()
                  if d.torch_name and hasattr(torch, d.torch_name)}


class TorchReader:
    """A state dict's tensors, read from the file on demand.

    For zip-format files (every ``torch.save`` since 1.6) the pickle is loaded onto the ``meta``
    device, which gives every tensor's dtype, shape, strides and where its storage lies in the
    archive without reading a weight; a tensor is then read with ``pread`` into memory of this
    process when asked for (never memory-mapped: see :mod:`modelgit._reading`). A tensor laid out
    contiguously in its storage (the usual case) is read straight from its bytes, chunk by chunk;
    others (a transposed view, a conjugate) are rebuilt from their whole storage. Legacy files
    are loaded whole, as before.
    """

    format = "torch"

    def __init__(self, path: str, tensors: dict[str, torch.Tensor], layout: bytes,
                 source: SourceFile | None = None, own_source: bool = False) -> None:
        self.path = path
        self._tensors = tensors
        self._layout = layout
        self._source, self._own = source, own_source
        # name -> file offset of the tensor's first byte, for tensors read straight from the file
        self._placed: dict[str, int] = {}
        if source is not None:
            for name, tensor in tensors.items():
                if tensor.is_contiguous() and not tensor.is_conj() and not tensor.is_neg():
                    self._placed[name] = (tensor.untyped_storage()._checkpoint_offset
                                          + tensor.storage_offset() * tensor.element_size())
        self._rebuilt: tuple[str, memoryview] | None = None
        self._guard = threading.Lock()

    def entries(self) -> list[TensorEntry]:
        """The tensors in the dict's (depth-first) order."""
        return [TensorEntry(name, _TORCH_TO_NAME[t.dtype], tuple(t.shape))
                for name, t in self._tensors.items()]

    def read_into(self, name: str, start: int, out) -> None:
        """Fill ``out`` with the raw bytes of tensor ``name`` from byte ``start``.

        Raises:
            FileChangedError: the file was truncated meanwhile.
        """
        length = memoryview(out).nbytes
        nbytes = self._tensors[name].numel() * self._tensors[name].element_size()
        if start < 0 or start + length > nbytes:
            raise ValueError(f"bytes [{start}, {start + length}) are outside tensor {name!r} "
                             f"({nbytes} bytes)")
        if name in self._placed:
            self._source.read_into(self._placed[name] + start, out)
            return
        with self._guard:  # chunks of one tensor come in a row: rebuild it once for all of them
            if self._rebuilt is None or self._rebuilt[0] != name:
                self._rebuilt = (name, self._contiguous_bytes(name))
            whole = self._rebuilt[1]
        memoryview(out).cast("B")[:] = whole[start:start + length]

    def data(self, name: str) -> memoryview:
        """Raw little-endian C-order bytes of tensor ``name``, in memory of this process."""
        if name in self._placed:
            import numpy as np

            tensor = self._tensors[name]
            out = np.empty(tensor.numel() * tensor.element_size(), dtype=np.uint8)
            self._source.read_into(self._placed[name], out)
            return memoryview(out)
        return self._contiguous_bytes(name)

    def _contiguous_bytes(self, name: str) -> memoryview:
        tensor = self._tensors[name]
        if tensor.device.type == "meta":  # rebuild it from its whole storage, read now
            storage = tensor.untyped_storage()
            raw = torch.empty(storage.nbytes(), dtype=torch.uint8)
            self._source.read_into(storage._checkpoint_offset, raw.numpy())
            real = torch.empty(0, dtype=tensor.dtype).set_(raw.untyped_storage(), tensor.storage_offset(),
                                                          tensor.shape, tensor.stride())
            if tensor.is_conj():
                real = real.conj()
            if tensor.is_neg():
                real = real._neg_view()
            tensor = real
        tensor = tensor.detach().resolve_conj().resolve_neg().contiguous()
        # reshape(-1) first: view() to a smaller dtype is refused on 0-d tensors.
        return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())

    def meta(self) -> dict[str, bytes]:
        """``{"layout": canonical JSON}``: the dict tree and its non-tensor values."""
        return {"layout": self._layout}

    def check_unchanged(self) -> None:
        """Raise FileChangedError when the file changed since it was opened."""
        if self._source is not None:
            self._source.check_unchanged()

    def close(self) -> None:
        self._tensors, self._placed, self._rebuilt = {}, {}, None
        if self._own and self._source is not None:
            self._source.close()


def open_torch(source: "str | SourceFile") -> TorchReader:
    """Open a ``torch.save`` checkpoint without executing any pickled code.

    Args:
        source: a ``.pt``/``.pth``/``.bin``/``.ckpt`` file written by ``torch.save`` (a path, or
            a :class:`~modelgit._reading.SourceFile` the caller closes).

    Returns:
        A :class:`TorchReader` over its tensors.

    Raises:
        UnsafeInputError: the pickle needs globals beyond tensors and plain containers.
        FormatError: the file is truncated, corrupt, not a torch checkpoint, or holds values
            other than tensors, dicts and JSON primitives.
        FileChangedError: the file changed while it was read.
    """
    own = not isinstance(source, SourceFile)
    src = SourceFile(os.fspath(source)) if own else source
    try:
        reader = _open(src, own)
    except BaseException:
        if own:
            src.close()
        raise
    if own and reader._source is None:  # loaded whole: the file is no longer needed
        src.close()
    return reader


def _open(src: SourceFile, own: bool) -> TorchReader:
    path = src.path
    head = src.read(0, 4)
    is_zip = head == _ZIP_MAGIC
    if not is_zip and head[:1] != _PICKLE_PROTO:
        raise FormatError(f"{path}: not a PyTorch checkpoint (starts with {head!r}, expected a zip "
                          "archive or a pickle); check the file name or re-save it with torch.save")
    members = _stored_members(src) if is_zip else None
    lazy = members is not None  # else (legacy, big-endian) the whole file is loaded, as torch does
    obj = _load(src, meta=lazy)
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: the checkpoint is a {type(obj).__name__}, not a dict of "
                          "tensors; save model.state_dict() instead")
    tensors: dict[str, torch.Tensor] = {}
    items = _flatten(path, obj, (), tensors)
    if lazy:
        for name, tensor in tensors.items():
            _check_storage(path, name, tensor, members)
    try:
        layout = _canonical_json({"version": _LAYOUT_VERSION, "items": items})
    except UnicodeEncodeError as exc:  # lone surrogates survive pickle but not UTF-8
        raise FormatError(f"{path}: a key or string value is not valid Unicode ({exc}); "
                          "re-save the checkpoint with valid strings") from None
    return TorchReader(path, tensors, layout, src if lazy else None, own and lazy)


def _stored_members(src: SourceFile) -> dict[int, int] | None:
    """{file offset of the data: size} of the archive's uncompressed members, or None when the
    tensors must be loaded by torch itself (a big-endian archive, which torch byte-swaps)."""
    try:
        with src.file_object() as handle, zipfile.ZipFile(handle) as archive:
            infos = archive.infolist()
            for info in infos:
                if info.filename.endswith("/byteorder") and archive.read(info).strip() == b"big":
                    return None
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise FormatError(f"{src.path}: cannot read the PyTorch checkpoint, it is truncated or "
                          f"corrupt ({type(exc).__name__}: {exc}); re-download or re-save it") from None
    members = {}
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            continue
        local = src.read(info.header_offset, 30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            continue
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        members[info.header_offset + 30 + name_len + extra_len] = info.file_size
    return members


def _check_storage(path: str, name: str, tensor: torch.Tensor, members: dict[int, int]) -> None:
    """The storage of a meta-loaded tensor must be a whole uncompressed member of the archive
    that holds every element of the tensor: then reading those bytes gives what torch.load would."""
    storage = tensor.untyped_storage()
    nbytes = storage.nbytes()
    offset = getattr(storage, "_checkpoint_offset", None)
    if offset is None or (nbytes and members.get(offset) != nbytes):
        raise FormatError(f"{path}: the storage of tensor {name!r} is not an uncompressed record "
                          f"of {nbytes} bytes in the archive; the file is corrupt or was not "
                          "written by torch.save, re-save it")
    if tensor.numel():
        last = tensor.storage_offset() + sum((size - 1) * stride for size, stride
                                             in zip(tensor.shape, tensor.stride()))
        if tensor.storage_offset() < 0 or (last + 1) * tensor.element_size() > nbytes:
            raise FormatError(f"{path}: tensor {name!r} reaches past the end of its storage; the "
                              "file is corrupt, re-save it")


def _load(src: SourceFile, meta: bool) -> Any:
    path = src.path
    try:
        with warnings.catch_warnings(), src.file_object() as handle:
            warnings.simplefilter("ignore", UserWarning)  # pickle protocols, TorchScript
            return torch.load(handle, map_location="meta" if meta else "cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _unsafe(path, _refusal_reason(str(exc))) from None
    except OSError:
        raise
    except Exception as exc:  # hostile bytes can break the parser in any way; none is a bug here
        if "TorchScript" in str(exc):
            raise _unsafe(path, "it is a TorchScript archive, which holds code") from None
        reason = f"{type(exc).__name__}: {str(exc) or 'unexpected end of data'}"
        raise FormatError(f"{path}: cannot read the PyTorch checkpoint, it is truncated or corrupt "
                          f"({reason}); re-download or re-save it") from None


def _unsafe(path: str, reason: str) -> UnsafeInputError:
    return UnsafeInputError(
        f"{path}: refused: torch's weights-only loader cannot read it without running pickled "
        f"code ({reason}). modelgit never executes pickled code. On a trusted machine, "
        "convert it to safetensors (e.g. "
        "safetensors.torch.save_file(torch.load(path, weights_only=False), 'model.safetensors')) "
        "and track that file instead")


def _refusal_reason(message: str) -> str:
    """The weights-only unpickler's own reason, without torch's advice to allowlist globals."""
    text = message.split("\n\nCheck the documentation")[0]
    if "WeightsUnpickler error:" in text:
        text = text.rsplit("WeightsUnpickler error:", 1)[1]
    else:  # torch puts the unpickler's message in the last paragraph
        text = [part for part in text.split("\n\n") if part.strip()][-1]
    text = text.split(" Please use `torch.serialization")[0]
    return " ".join(text.split())[:300].rstrip(".")


def _flatten(path: str, tree: dict, prefix: tuple, tensors: dict[str, torch.Tensor]) -> list:
    """Collect the tensors of ``tree`` into ``tensors`` and return its layout items."""
    items = []
    for key, value in tree.items():
        keys = prefix + (key,)
        where = ".".join(map(str, keys))
        if type(key) not in _KEY_TYPES:
            raise FormatError(f"{path}: key {where!r} is a {type(key).__name__}; only str and int "
                              "keys are supported, re-save the checkpoint with string keys")
        if isinstance(value, torch.Tensor):
            _check_tensor(path, where, value)
            if where in tensors:
                raise FormatError(f"{path}: two tensors flatten to the name {where!r} (a dotted "
                                  "key and a nested dict); rename one of them and re-save")
            tensors[where] = value
            node: dict = {"tensor": where}
        elif isinstance(value, dict):
            node = {"dict": _flatten(path, value, keys, tensors)}
        elif type(value) in _PRIMITIVES:
            node = _primitive_node(value)
        else:
            raise FormatError(f"{path}: key {where!r} holds a {type(value).__name__}; only "
                              "tensors, dicts and JSON primitives (int, float, bool, str, None) "
                              "are supported, convert it (e.g. a list to a tensor) and re-save")
        items.append([key, node])
    return items


def _check_tensor(path: str, where: str, tensor: torch.Tensor) -> None:
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_nested:
        raise FormatError(f"{path}: tensor {where!r} is not dense (layout {tensor.layout}, "
                          f"dtype {tensor.dtype}); convert it with .to_dense() or .dequantize() "
                          "and re-save")
    if tensor.dtype not in _TORCH_TO_NAME:
        supported = ", ".join(str(t) for t in _TORCH_TO_NAME)
        raise FormatError(f"{path}: tensor {where!r} has dtype {tensor.dtype}, which modelgit does "
                          f"not support (supported: {supported}); cast it and re-save")


def _primitive_node(value: Any) -> dict:
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    return {"value": value}


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def write_torch(path: str, meta: dict[str, bytes], entries: list[TensorEntry],
                read: Callable[[TensorEntry], Iterable[bytes]]) -> None:
    """Write a ``torch.save`` checkpoint rebuilt from raw tensor bytes.

    Args:
        path: the file to write (overwritten).
        meta: :meth:`TorchReader.meta` of the original; without ``"layout"`` a flat dict is
            written in entry order.
        entries: the tensors, in order.
        read: yields the raw little-endian bytes of one tensor, in pieces.

    Raises:
        FormatError: an unknown dtype, duplicate names, or a layout that does not match the
            entries.
    """
    if len({e.name for e in entries}) != len(entries):
        raise FormatError(f"{path}: duplicate tensor names in the entry list; the manifest is "
                          "corrupt, re-commit the checkpoint")
    items = _parse_layout(path, meta["layout"]) if "layout" in meta else None  # fail before reading
    tensors = {entry.name: _rebuild_tensor(path, entry, read) for entry in entries}
    obj = tensors
    if items is not None:
        used: set[str] = set()
        obj = _unflatten(path, items, tensors, used)
        if used != set(tensors):
            missing = sorted(set(tensors) - used)[:5]
            raise FormatError(f"{path}: the layout does not place tensors {missing}; the manifest "
                              "is corrupt, re-commit the checkpoint")
    recorder = _WriteRecorder(path)
    try:
        torch.save(obj, recorder)
    except (RuntimeError, OSError) as exc:
        cause = recorder.error or (exc if isinstance(exc, OSError) else None)
        if cause is not None and cause.errno in _FULL_ERRNOS:
            raise StoreFullError(f"no space left writing {path} ({cause.strerror}); free some space "
                                 "(or point TMPDIR at a larger disk) and run the command again") from None
        raise FormatError(f"{path}: torch.save failed: {cause or exc}") from None
    finally:
        recorder.close()


class _WriteRecorder:
    """A binary file that remembers the OSError of a failed write: torch.save replaces it with an
    uninformative RuntimeError ('unexpected pos'), and a full disk must be reported as such."""

    def __init__(self, path: str):
        self._file = open(path, "wb")
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _rebuild_tensor(path: str, entry: TensorEntry,
                    read: Callable[[TensorEntry], Iterable[bytes]]) -> torch.Tensor:
    info = DTYPES.get(entry.dtype)
    torch_dtype = getattr(torch, info.torch_name, None) if info and info.torch_name else None
    if torch_dtype is None:
        raise FormatError(f"{path}: tensor {entry.name!r} has dtype {entry.dtype}, which torch "
                          f"{torch.__version__} cannot hold; write it as safetensors instead")
    flat = torch.empty(entry.nbytes, dtype=torch.uint8)
    fill_buffer(read, entry, flat.numpy())  # the numpy view shares memory with flat
    return flat.view(torch_dtype).reshape(entry.shape)


_MAX_LAYOUT_DEPTH = 64


def _parse_layout(path: str, layout: bytes) -> Any:
    from ..untrusted import json_depth

    # the layout comes from a store object a stranger may have pushed: its depth is bounded
    # before parsing (a state dict's non-tensor values may be inf, so it is not strict JSON)
    if json_depth(layout, _MAX_LAYOUT_DEPTH) > _MAX_LAYOUT_DEPTH:
        raise FormatError(f"{path}: the torch layout nests more than {_MAX_LAYOUT_DEPTH} levels; "
                          "the manifest is corrupt, re-commit the checkpoint")
    try:
        parsed = json.loads(layout.decode("utf-8"))
        version = parsed["version"]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        raise FormatError(f"{path}: the torch layout is not a JSON object with a version "
                          f"({exc!r}); the manifest is corrupt, re-commit the checkpoint") from None
    if version != _LAYOUT_VERSION:
        raise FormatError(f"{path}: torch layout version {version!r} is not {_LAYOUT_VERSION}, "
                          "the one this modelgit knows; upgrade modelgit")
    return parsed.get("items")


def _unflatten(path: str, items: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> dict:
    """Rebuild the dict tree described by layout ``items``, marking placed tensors in ``used``."""
    def bad(why: str) -> FormatError:
        return FormatError(f"{path}: invalid torch layout: {why}; the manifest is corrupt, "
                           "re-commit the checkpoint")

    if not isinstance(items, list):
        raise bad(f"expected a list of [key, node] pairs, got {type(items).__name__}")
    tree: dict = {}
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) in _KEY_TYPES
                and isinstance(item[1], dict) and len(item[1]) == 1):
            raise bad(f"malformed item {item!r:.80}")
        key, ((kind, value),) = item[0], item[1].items()
        if key in tree:
            raise bad(f"duplicate key {key!r}")
        if kind == "tensor":
            if value not in tensors or value in used:
                raise bad(f"tensor {value!r} is unknown or placed twice")
            used.add(value)
            tree[key] = tensors[value]
        elif kind == "dict":
            tree[key] = _unflatten(path, value, tensors, used)
        elif kind == "value" and type(value) in _PRIMITIVES:
            tree[key] = value
        elif kind == "float" and value in _NON_FINITE:
            tree[key] = _NON_FINITE[value]
        else:
            raise bad(f"unknown node {item[1]!r:.80} at key {key!r}")
    return tree



FORMAT = Format(name="torch", open=open_torch, write=write_torch, sniff=sniff_torch)

