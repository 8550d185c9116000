"""Data cards: what data an adapter was trained or evaluated on, without any of its content.

A card records the format, the file names (relative to the data path), their sizes and SHA-256
digests, the record count and how many records carry a label: enough to tell whether two runs
used the same bytes and to reason about scale, never a word of the data.
"""

from __future__ import annotations

import hashlib
import json
import os

from .examples import load_examples

__all__ = ["CARD_VERSION", "data_card", "write_data_card", "sha256_file"]

CARD_VERSION = 1


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def data_card(path: str | os.PathLike, text_field: str = "text", label_field: str = "label",
              text_unit: str = "line", format: str | None = None) -> dict:
    """Describe the data at ``path`` (read as :func:`~modelgit.data.load_examples` reads it).

    ``sha256`` is the file's digest for a single file; for a directory it is the SHA-256 of the
    ``sha256sum``-style listing (``"<digest>  <relative name>\\n"`` per file, sorted by name),
    so it changes whenever any file's bytes or name change.

    Returns:
        A JSON-ready dict: ``card_version``, ``name``, ``format``, ``files`` (``name``, ``bytes``,
        ``sha256``), ``bytes``, ``sha256``, ``records``, ``labeled``, ``distinct_labels``,
        ``text_field``, ``label_field``, ``text_unit``.
    Raises:
        UsageError: as :func:`~modelgit.data.load_examples`.
    """
    path = os.fspath(path)
    examples = load_examples(path, text_field, label_field, text_unit, format)
    root = os.path.abspath(path) if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    files = [{"name": os.path.relpath(file, root).replace(os.sep, "/"), "bytes": os.path.getsize(file),
              "sha256": sha256_file(file)} for file in examples.files]
    if os.path.isdir(path):
        listing = "".join(f"{f['sha256']}  {f['name']}\n" for f in files)
        combined = hashlib.sha256(listing.encode()).hexdigest()
    else:
        combined = files[0]["sha256"]
    records = labeled = 0
    labels: set = set()
    for example in examples:
        records += 1
        if example.label is not None:
            labeled += 1
            labels.add(example.label)
    return {"card_version": CARD_VERSION, "name": os.path.basename(os.path.normpath(path)),
            "format": examples.format, "files": files, "bytes": sum(f["bytes"] for f in files),
            "sha256": combined, "records": records, "labeled": labeled,
            "distinct_labels": len(labels), "text_field": text_field, "label_field": label_field,
            "text_unit": text_unit}


def write_data_card(card: dict, path: str | os.PathLike) -> None:
    """Write a card as canonical JSON (sorted keys, two-space indent, trailing newline)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(card, indent=2, sort_keys=True) + "\n")
