"""The manifest: the small canonical text that stands for a checkpoint (spec).

A manifest is what git tracks in place of the weights. Equal content gives equal bytes: files
are sorted by path, tensors by name, every string is JSON-quoted, and options are canonical JSON.

    modelgit-manifest 1
    root file
    file "model.safetensors" safetensors {"header":"<id>"}
    tensor "embed.weight" F32 [30522,384] <id>,<id>,...
    tensor "norm.bias" F32 [384] <id>
    file "config.json" blob {}
    tensor "" U8 [612] <id>

* Line 1 names the format version. A reader MUST refuse a newer version with a message asking
  for a newer modelgit.
* ``root file`` or ``root dir``: whether the checkpoint is one file or a directory (a sharded
  Hugging Face model, a PEFT adapter); it decides what materialising it creates.
* ``file PATH FORMAT OPTIONS``: a file of the checkpoint (``PATH`` is relative, ``/``-separated;
  a single-file checkpoint has one file entry), its format (see ``modelgit.formats``), and the
  format's options: ids of blobs holding what is needed to rebuild the file exactly (the
  safetensors header, a torch state dict's layout) or small flags.
* ``tensor NAME DTYPE SHAPE IDS``: a tensor of the file above it, with the ids of its
  row-aligned chunks in order (see ``modelgit.store.chunking``). A non-tensor file is one
  tensor named ``""`` of dtype ``U8``.

How an object is encoded (raw, zstd, delta...) is deliberately not in the manifest: it is a
property of one store and may differ between a local store and a remote one holding the same
content, while the manifest must stay equal for equal content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from math import prod

from .dtypes import DTYPES
from .errors import FormatError, ManifestError, ManifestVersionError
from .store.ids import format_shape, is_object_id, parse_shape
from .untrusted import loads_json

__all__ = ["MANIFEST_VERSION", "TensorRecord", "FileRecord", "Manifest", "is_manifest"]

MANIFEST_VERSION = 1
MAGIC = "modelgit-manifest"


@dataclass(frozen=True)
class TensorRecord:
    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class FileRecord:
    path: str
    format: str
    options: dict[str, str] = field(default_factory=dict)
    tensors: tuple[TensorRecord, ...] = ()

    def tensor(self, name: str) -> TensorRecord:
        for record in self.tensors:
            if record.name == name:
                return record
        raise KeyError(name)


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _options_text(options: dict[str, str]) -> str:
    return json.dumps(options, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


ROOT_KINDS = ("file", "dir")


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileRecord, ...]
    root: str = "file"

    def __post_init__(self):
        if self.root not in ROOT_KINDS:
            raise ManifestError(f"manifest root must be one of {ROOT_KINDS}, not {self.root!r}")
        if self.root == "file" and len(self.files) != 1:
            raise ManifestError(f"a single-file manifest needs exactly one file, not {len(self.files)}")
        object.__setattr__(self, "files", tuple(sorted(
            (FileRecord(f.path, f.format, dict(sorted(f.options.items())),
                        tuple(sorted(f.tensors, key=lambda t: t.name))) for f in self.files),
            key=lambda f: f.path)))

    @property
    def logical_bytes(self) -> int:
        return sum(t.nbytes for f in self.files for t in f.tensors)

    @property
    def tensor_count(self) -> int:
        return sum(len(f.tensors) for f in self.files if f.format != "blob")

    def object_ids(self) -> set[str]:
        """Every object the manifest needs: chunks and option blobs."""
        ids = {oid for f in self.files for t in f.tensors for oid in t.chunks}
        ids.update(v for f in self.files for v in f.options.values() if is_object_id(v))
        return ids

    def file(self, path: str) -> FileRecord:
        for record in self.files:
            if record.path == path:
                return record
        raise KeyError(path)

    def dumps(self) -> bytes:
        lines = [f"{MAGIC} {MANIFEST_VERSION}", f"root {self.root}"]
        for f in self.files:
            lines.append(f"file {_quote(f.path)} {f.format} {_options_text(f.options)}")
            for t in f.tensors:
                lines.append(f"tensor {_quote(t.name)} {t.dtype} {format_shape(t.shape)} "
                             + ",".join(t.chunks))
        return ("\n".join(lines) + "\n").encode("utf-8")

    @classmethod
    def loads(cls, data: bytes, where: str = "manifest") -> "Manifest":
        """Parse manifest bytes.

        Raises:
            ManifestVersionError: written by a newer modelgit.
            ManifestError: anything malformed, with the line number.
        """
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ManifestError(f"{where}: not UTF-8 text, so not a modelgit manifest") from None
        lines = text.split("\n")
        if not lines or not lines[0].startswith(MAGIC + " "):
            raise ManifestError(f"{where}: does not start with '{MAGIC} <version>'; "
                                "not a modelgit manifest")
        version_text = lines[0][len(MAGIC) + 1:]
        if not version_text.isdigit():
            raise ManifestError(f"{where}: bad version {version_text!r}")
        if int(version_text) > MANIFEST_VERSION:
            raise ManifestVersionError(
                f"{where}: manifest format {version_text} is newer than this modelgit reads "
                f"({MANIFEST_VERSION}); upgrade modelgit (pip install -U modelgit)")
        if lines[-1] != "":
            raise ManifestError(f"{where}: must end with a newline")
        root = lines[1][len("root "):] if len(lines) > 1 and lines[1].startswith("root ") else ""
        if root not in ROOT_KINDS:
            raise ManifestError(f"{where}, line 2: expected 'root file' or 'root dir'")
        files: list[tuple[FileRecord, list[TensorRecord]]] = []
        for number, line in enumerate(lines[2:-1], start=3):
            try:
                _parse_line(line, files)
            except (ValueError, KeyError) as exc:
                raise ManifestError(f"{where}, line {number}: {exc}") from None
        manifest = cls(tuple(FileRecord(f.path, f.format, f.options, tuple(tensors))
                             for f, tensors in files), root)
        if manifest.dumps() != data:
            raise ManifestError(f"{where}: not in canonical form (sorted files and tensors, "
                                "canonical options); it was edited by hand or by a buggy tool")
        return manifest


def _parse_line(line: str, files: list[tuple[FileRecord, list[TensorRecord]]]) -> None:
    kind, _, rest = line.partition(" ")
    decoder = json.JSONDecoder()
    if kind in ("file", "tensor") and not rest.startswith('"'):  # a name, never nested JSON
        raise ValueError(f"expected a quoted name after {kind!r}")
    if kind == "file":
        path, end = decoder.raw_decode(rest)
        fmt, _, options_text = rest[end + 1:].partition(" ")
        try:  # untrusted text (a contributor's manifest): strict, flat
            options = loads_json(options_text, "file options", 1 << 20, max_depth=1)
        except FormatError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(path, str) or not isinstance(options, dict) or not fmt:
            raise ValueError("expected: file \"PATH\" FORMAT {OPTIONS}")
        if not all(isinstance(v, str) for v in options.values()):
            raise ValueError("file options must be strings")
        files.append((FileRecord(path, fmt, options), []))
        return
    if kind == "tensor":
        if not files:
            raise ValueError("tensor line before any file line")
        name, end = decoder.raw_decode(rest)
        fields = rest[end + 1:].split(" ")
        if not isinstance(name, str) or len(fields) != 3:
            raise ValueError("expected: tensor \"NAME\" DTYPE [SHAPE] ID,ID,...")
        dtype, shape_text, ids_text = fields
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}")
        chunks = tuple(ids_text.split(","))
        if not all(is_object_id(oid) for oid in chunks):
            raise ValueError(f"bad object id list {ids_text!r}")
        files[-1][1].append(TensorRecord(name, dtype, parse_shape(shape_text), chunks))
        return
    raise ValueError(f"unknown line kind {kind!r}")


def is_manifest(data: bytes) -> bool:
    """True when ``data`` starts like a manifest (cheap; does not validate)."""
    return data.startswith(MAGIC.encode() + b" ")
