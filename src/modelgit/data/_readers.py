"""One streaming reader per data format; each yields ``(text, raw_label)`` pairs.

Error messages name files, line numbers and field names, never the data itself: the data of a
contributor must not leak into logs or CI output.
"""

from __future__ import annotations

import csv
import json
from typing import Iterator

from ..errors import UsageError

__all__ = ["READERS", "read_text", "read_jsonl", "read_csv", "read_tsv", "read_parquet",
           "read_datasets", "require"]

Records = Iterator[tuple[str, object]]


def require(package: str, purpose: str):
    """Import an optional package or raise a UsageError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        name = package.split(".")[0]
        raise UsageError(f"{purpose} needs the optional package {name!r}, which is not installed: "
                         f"`pip install {name}`") from None


def _text_value(value, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{where}: field {field!r} is a {type(value).__name__}, not text: "
                         "point --text-field at a text column")
    return value


def _open_text(path: str):
    return open(path, encoding="utf-8", errors="strict", newline="")


def _decode_guard(path: str, error: UnicodeDecodeError) -> UsageError:
    return UsageError(f"{path}: not UTF-8 text (byte offset {error.start}): re-encode it as UTF-8")


def read_text(path: str, unit: str) -> Iterator[str]:
    """Non-empty lines, blank-line separated paragraphs, or the whole file, stripped."""
    try:
        with _open_text(path) as handle:
            if unit == "file":
                text = handle.read().strip()
                if text:
                    yield text
                return
            block: list[str] = []
            for line in handle:
                line = line.strip()
                if unit == "line":
                    if line:
                        yield line
                elif line:
                    block.append(line)
                elif block:
                    yield "\n".join(block)
                    block = []
            if block:
                yield "\n".join(block)
    except UnicodeDecodeError as exc:
        raise _decode_guard(path, exc) from None


def read_jsonl(path: str, text_field: str, label_field: str) -> Records:
    """One JSON object per line; blank lines are skipped."""
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{path}, line {number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UsageError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}): "
                                     "JSONL needs one JSON object per line") from None
                if not isinstance(record, dict):
                    raise UsageError(f"{where}: a JSON {type(record).__name__}, not an object")
                if text_field not in record:
                    raise UsageError(f"{where}: no {text_field!r} field (fields: "
                                     f"{', '.join(sorted(record)) or 'none'}): pass --text-field NAME")
                yield _text_value(record[text_field], where, text_field), record.get(label_field)
    except UnicodeDecodeError as exc:
        raise _decode_guard(path, exc) from None


def read_csv(path: str, text_field: str, label_field: str, delimiter: str = ",") -> Records:
    """A header row, then one record per row (quoted fields may span lines)."""
    try:
        with _open_text(path) as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            try:
                columns = reader.fieldnames or []
                if text_field not in columns:
                    raise UsageError(f"{path}: no {text_field!r} column (columns: "
                                     f"{', '.join(columns) or 'none'}): pass --text-field with one of them")
                for row in reader:
                    yield row[text_field] or "", row.get(label_field)
            except csv.Error as exc:
                raise UsageError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise _decode_guard(path, exc) from None


def read_tsv(path: str, text_field: str, label_field: str) -> Records:
    return read_csv(path, text_field, label_field, delimiter="\t")


def _check_columns(path: str, columns: list[str], text_field: str) -> None:
    if text_field not in columns:
        raise UsageError(f"{path}: no {text_field!r} column (columns: {', '.join(columns) or 'none'}): "
                         "pass --text-field with one of them")


def read_parquet(path: str, text_field: str, label_field: str) -> Records:
    """Row groups in batches of 1024 rows, reading only the text and label columns."""
    pq = require("pyarrow.parquet", "reading Parquet data")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid for a bad file
        raise UsageError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    columns = list(parquet.schema_arrow.names)
    _check_columns(path, columns, text_field)
    wanted = [text_field] + ([label_field] if label_field in columns and label_field != text_field else [])
    for batch in parquet.iter_batches(batch_size=1024, columns=wanted):
        texts = batch.column(text_field).to_pylist()
        labels = batch.column(label_field).to_pylist() if len(wanted) > 1 else [None] * len(texts)
        for text, label in zip(texts, labels):
            yield _text_value(text, path, text_field) if text is not None else "", label


def read_datasets(path: str, text_field: str, label_field: str) -> Records:
    """A directory written by ``Dataset.save_to_disk`` (a ``DatasetDict``: its ``train`` split)."""
    datasets = require("datasets", "reading a saved `datasets` directory")
    dataset = datasets.load_from_disk(path)
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset and len(dataset) != 1:
            raise UsageError(f"{path}: a DatasetDict with splits {', '.join(dataset)} and no 'train': "
                             "save the split you want with `dataset[split].save_to_disk(...)`")
        dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
    _check_columns(path, list(dataset.column_names), text_field)
    has_label = label_field in dataset.column_names and label_field != text_field
    for row in dataset.select_columns([text_field] + ([label_field] if has_label else [])):
        text = row[text_field]
        yield (_text_value(text, path, text_field) if text is not None else ""), row.get(label_field)


READERS = {"jsonl": read_jsonl, "csv": read_csv, "tsv": read_tsv, "parquet": read_parquet}
