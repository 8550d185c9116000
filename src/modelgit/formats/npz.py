"""NumPy ``.npz`` archives (a zip of ``.npy`` members), read without unpickling.

Opening reads only the zip directory and each member's ``.npy`` header (dtype, shape, order);
an array is decompressed when its bytes are asked for, one at a time. Object arrays would need
pickle and raise :class:`~modelgit.errors.UnsafeInputError`. Fortran-order and big-endian members
are handed out as C-order little-endian bytes, like every format; a rebuilt archive therefore
holds C-order little-endian arrays, equal value for value and tensor-exact in modelgit's terms.

``meta()`` is ``{"compressed": b"1" | b"0"}``: whether members were deflated
(``np.savez_compressed``) or stored (``np.savez``), so :func:`write_npz` writes the same kind.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from math import prod
from typing import Callable, Iterable

import numpy as np

from .._reading import SourceFile
from ..dtypes import DTYPES
from ..errors import FormatError, UnsafeInputError
from ._sniff import sniff_npz
from .base import Format, TensorEntry, fill_buffer

__all__ = ["FORMAT", "NpzReader", "open_npz", "write_npz", "sniff_npz"]

# Keyed by the little-endian dtype string ("<f4", "|b1"...): byte order is fixed when reading.
_NUMPY_TO_NAME = {np.dtype(d.numpy_name).str: d.name for d in DTYPES.values() if d.numpy_name}
# Errors a damaged archive raises while a member is decompressed or parsed.
_CORRUPT = (ValueError, EOFError, zipfile.BadZipFile, zlib.error)


class NpzReader:
    """An open ``.npz``: headers parsed, arrays loaded on demand."""

    format = "npz"

    def __init__(self, path: str, npz, entries: dict[str, TensorEntry], compressed: bool,
                 closers=()) -> None:
        self.path = path
        self._npz = npz
        self._entries = entries
        self._compressed = compressed
        self._closers = list(closers)  # the open file(s) the archive is read through

    def entries(self) -> list[TensorEntry]:
        """The arrays in archive order."""
        return list(self._entries.values())

    def data(self, name: str) -> memoryview:
        """Raw little-endian C-order bytes of array ``name``, loaded now.

        Raises:
            FormatError: the member cannot be decompressed or decoded.
        """
        entry = self._entries[name]
        try:
            array = self._npz[name + ".npy"]
        except _CORRUPT as exc:
            raise FormatError(f"{self.path}: member {name + '.npy'!r} cannot be read ({exc}); the "
                              "archive is corrupt, re-download or re-export it") from None
        if array.shape != entry.shape:
            raise FormatError(f"{self.path}: member {name + '.npy'!r} has shape {array.shape}, its "
                              f"header said {entry.shape}; the archive is corrupt")
        # astype to "<" fixes big-endian members; reshape(-1) (C order) fixes Fortran ones.
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        flat = np.ascontiguousarray(little.reshape(-1))
        return memoryview(flat.view(np.uint8))

    def meta(self) -> dict[str, bytes]:
        """``{"compressed": b"1"}`` when members were deflated, else ``b"0"``."""
        return {"compressed": b"1" if self._compressed else b"0"}

    def close(self) -> None:
        self._npz.close()
        for closer in self._closers:
            closer.close()
        self._closers = []


def open_npz(source: "str | SourceFile") -> NpzReader:
    """Open a ``.npz`` archive, reading only the member headers.

    Args:
        source: the archive (a path, or a :class:`~modelgit._reading.SourceFile`: read through
            that open file, whatever happens to the path meanwhile).

    Returns:
        An :class:`NpzReader`; entry names are member names without ``.npy``.

    Raises:
        UnsafeInputError: a member is an object array (stored as a pickle).
        FormatError: the archive is truncated or corrupt, or a member is not a ``.npy`` array of
            a supported dtype.
    """
    own = not isinstance(source, SourceFile)
    src = SourceFile(os.fspath(source)) if own else source
    handle = None
    try:
        handle = src.file_object()
        npz = _load_headers(src.path, handle)
    except BaseException:
        if handle is not None:
            handle.close()
        if own:
            src.close()
        raise
    closers = [handle, src] if own else [handle]
    return NpzReader(src.path, *npz, closers=closers)


def _load_headers(path: str, handle):
    """(NpzFile, entries, compressed) of the archive open as ``handle``."""
    try:
        npz = np.load(handle, allow_pickle=False)
    except _CORRUPT as exc:
        raise FormatError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc}); "
                          "it is truncated or corrupt, re-download or re-export it") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise FormatError(f"{path}: is a single .npy array, not an .npz archive; rename it to "
                          ".npy or save it with np.savez")
    try:
        entries = {}
        for info in npz.zip.infolist():
            entry = _read_entry(path, npz.zip, info)
            if entry.name in entries:
                raise FormatError(f"{path}: member {info.filename!r} appears twice; re-export "
                                  "the archive with np.savez")
            entries[entry.name] = entry
        compressed = any(i.compress_type != zipfile.ZIP_STORED for i in npz.zip.infolist())
    except BaseException:
        npz.close()
        raise
    return npz, entries, compressed


def _read_entry(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> TensorEntry:
    """Parse one member's ``.npy`` header without reading its data."""
    member = info.filename
    if not member.endswith(".npy"):
        raise FormatError(f"{path}: member {member!r} is not a .npy array; only archives written "
                          "by np.savez / np.savez_compressed are supported")
    try:
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            header_len = f.tell()
    except _CORRUPT as exc:
        raise FormatError(f"{path}: member {member!r} has no valid .npy header ({exc}); the "
                          "archive is corrupt, re-download or re-export it") from None
    if dtype.hasobject:
        raise UnsafeInputError(f"{path}: member {member!r} is an object array (dtype {dtype}); "
                               "reading it would unpickle Python objects, which modelgit never "
                               "does. Convert it to a numeric array on a trusted machine")
    name = _NUMPY_TO_NAME.get(dtype.newbyteorder("<").str)
    if name is None:
        raise FormatError(f"{path}: member {member!r} has dtype {dtype}, which modelgit does not "
                          f"support (supported: {', '.join(_NUMPY_TO_NAME)}); cast it and re-save")
    # np.save writes exactly header + data, so any other size means a damaged member.
    expected = header_len + prod(shape) * dtype.itemsize
    if info.file_size != expected:
        raise FormatError(f"{path}: member {member!r} is {info.file_size} bytes but its header "
                          f"describes {expected}; the archive is corrupt")
    return TensorEntry(member[:-len(".npy")], name, tuple(shape))


def write_npz(path: str, meta: dict[str, bytes], entries: list[TensorEntry],
              read: Callable[[TensorEntry], Iterable[bytes]]) -> None:
    """Write an ``.npz`` archive, one member at a time.

    Args:
        path: the file to write (overwritten).
        meta: :meth:`NpzReader.meta` of the original (``{}`` writes a stored archive).
        entries: the arrays, in order.
        read: yields the raw little-endian bytes of one array, in pieces.

    Raises:
        FormatError: a dtype numpy cannot hold (BF16, F8_*), duplicate names, or a bad meta value.
    """
    dtypes = [_numpy_dtype(path, entry) for entry in entries]  # fail before creating the file
    if len({e.name for e in entries}) != len(entries):
        raise FormatError(f"{path}: duplicate array names in the entry list; the manifest is "
                          "corrupt, re-commit the checkpoint")
    flag = meta.get("compressed", b"0")
    if flag not in (b"0", b"1"):
        raise FormatError(f"{path}: npz meta 'compressed' is {flag!r}, expected b'0' or b'1'; "
                          "the manifest is corrupt")
    compression = zipfile.ZIP_DEFLATED if flag == b"1" else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=compression, allowZip64=True) as zf:
        for entry, dtype in zip(entries, dtypes):
            array = _rebuild_array(entry, dtype, read)  # only this array is in memory
            with zf.open(entry.name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array, allow_pickle=False)


def _numpy_dtype(path: str, entry: TensorEntry) -> np.dtype:
    info = DTYPES.get(entry.dtype)
    if info is None or info.numpy_name is None:
        raise FormatError(f"{path}: tensor {entry.name!r} has dtype {entry.dtype}, which an .npz "
                          "archive cannot hold (numpy has no such type); check the checkpoint out "
                          "as safetensors instead")
    return np.dtype(info.numpy_name)


def _rebuild_array(entry: TensorEntry, dtype: np.dtype,
                   read: Callable[[TensorEntry], Iterable[bytes]]) -> np.ndarray:
    buf = np.empty(entry.nbytes, dtype=np.uint8)
    fill_buffer(read, entry, buf)
    return buf.view(dtype).reshape(entry.shape)


FORMAT = Format(name="npz", open=open_npz, write=write_npz, sniff=sniff_npz)
