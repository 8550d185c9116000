"""`load_examples`: one re-iterable stream of (text, label) records from a local path."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Iterator

from .._reading import check_regular
from ..errors import UsageError
from . import _readers

__all__ = ["Example", "Examples", "FORMATS", "TEXT_UNITS", "load_examples", "normalize_label"]

#: file extension -> format name
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
           ".parquet": "parquet", ".pq": "parquet", ".txt": "text", ".text": "text", ".md": "text"}
#: how a plain text file is cut into records
TEXT_UNITS = ("line", "paragraph", "file")
_DATASETS_MARKERS = ("dataset_dict.json", "state.json")


@dataclass(frozen=True)
class Example:
    """One record: its text and, for classification data, its label (int or str)."""

    text: str
    label: int | str | None = None


def normalize_label(value) -> int | str | None:
    """A label as an int when it spells one (``1``, ``"1"``, ``1.0``), else a stripped str.

    Empty values (None, "") mean "no label". CSV gives every label as a string; this makes
    ``"0"`` in a CSV and ``0`` in JSONL the same class.
    """
    if value is None or isinstance(value, bool):
        return None if value is None else int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if not text:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    return text


class Examples:
    """The records of a path, read lazily and afresh on every iteration (nothing is cached
    but the count).

    Attributes:
        path: what was given to :func:`load_examples`.
        format: ``jsonl``, ``csv``, ``tsv``, ``parquet``, ``text``, ``dir`` or ``datasets``.
        files: the files the records come from, sorted (for a ``datasets`` directory: every
            file of it), as absolute paths.
    """

    def __init__(self, path: str, format: str, files: list[str], text_field: str,
                 label_field: str, text_unit: str):
        self.path, self.format, self.files = path, format, files
        self.text_field, self.label_field, self.text_unit = text_field, label_field, text_unit
        self._count: int | None = None

    def _records(self) -> Iterator[tuple[str, object]]:
        if self.format == "datasets":
            yield from _readers.read_datasets(self.path, self.text_field, self.label_field)
            return
        for file in self.files:
            fmt = FORMATS[os.path.splitext(file)[1].lower()] if self.format == "dir" else self.format
            if fmt == "text":
                yield from ((text, None) for text in _readers.read_text(file, self.text_unit))
            else:
                yield from _readers.READERS[fmt](file, self.text_field, self.label_field)

    def __iter__(self) -> Iterator[Example]:
        for text, label in self._records():
            yield Example(text, normalize_label(label))

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in self._records())
        return self._count

    def take(self, n: int | None = None) -> list[Example]:
        """The first ``n`` examples (all of them when ``n`` is None)."""
        return list(itertools.islice(iter(self), n))

    def __repr__(self) -> str:
        return f"Examples({self.path!r}, format={self.format!r}, files={len(self.files)})"


def _detect(path: str, format: str | None) -> tuple[str, list[str]]:
    if not os.path.exists(path):
        raise UsageError(f"data path {path!r} does not exist: check the path (a JSONL, CSV, "
                         "Parquet or text file, or a directory of them)")
    if os.path.isdir(path):
        if format == "datasets" or any(os.path.isfile(os.path.join(path, m)) for m in _DATASETS_MARKERS):
            return "datasets", _walk(path, lambda name: True)
        files = _walk(path, lambda name: os.path.splitext(name)[1].lower() in FORMATS)
        if not files:
            raise UsageError(f"data directory {path!r} holds no {', '.join(sorted(set(FORMATS)))} "
                             "files and is not a saved `datasets` directory: point --data at the data")
        return "dir", files
    _check_readable(path)
    ext = os.path.splitext(path)[1].lower()
    fmt = format or FORMATS.get(ext)
    if fmt is None:
        raise UsageError(f"cannot tell the format of {path!r} from its extension {ext or '(none)'!r}: "
                         f"use one of {', '.join(sorted(FORMATS))} (JSON: one object per line, .jsonl)")
    return fmt, [os.path.abspath(path)]


def _check_readable(path: str) -> None:
    """Data is read several times (a data card, then every epoch): a pipe, socket or device
    would block or give its bytes once, so only regular files (or links to them) are read."""
    check_regular(path, os.stat(path), ": write the data to a file and point --data at it")


def _walk(root: str, keep) -> list[str]:
    out = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(os.path.abspath(os.path.join(folder, n)) for n in names
                   if not n.startswith(".") and keep(n))
    for path in out:
        _check_readable(path)
    return sorted(out)


def load_examples(path: str | os.PathLike, text_field: str = "text", label_field: str = "label",
                  text_unit: str = "line", format: str | None = None) -> Examples:
    """Open the examples at ``path``, checking that the first record can be read.

    Args:
        path: a ``.jsonl``, ``.csv``, ``.tsv``, ``.parquet`` or ``.txt``/``.md`` file, a directory
            of such files (read in sorted order), or a directory from ``datasets.save_to_disk``.
        text_field, label_field: the column/key names in JSONL, CSV, Parquet and datasets
            (a missing label column just means unlabeled data).
        text_unit: how text files become records: a non-empty ``line``, a blank-line separated
            ``paragraph``, or the whole ``file``.
        format: force a format instead of guessing it from the extension.
    Returns:
        An :class:`Examples`, iterable any number of times.
    Raises:
        UsageError: a missing path, an unknown format, a missing text column, undecodable
            text, a missing optional package (``pyarrow``, ``datasets``), or no records at all.
    """
    path = os.fspath(path)
    if text_unit not in TEXT_UNITS:
        raise UsageError(f"text unit {text_unit!r} is not one of {', '.join(TEXT_UNITS)}")
    fmt, files = _detect(path, format)
    if fmt not in {*FORMATS.values(), "dir", "datasets"}:
        raise UsageError(f"unknown data format {fmt!r}: use one of "
                         f"{', '.join(sorted({*FORMATS.values(), 'datasets'}))}")
    examples = Examples(path, fmt, files, text_field, label_field, text_unit)
    if next(iter(examples), None) is None:
        raise UsageError(f"{path!r} holds no examples (empty files or only blank lines): "
                         "give a data file with at least one non-empty record")
    return examples
