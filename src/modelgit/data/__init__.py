"""Local training and evaluation data: read records from files, describe them without content.

Formats: JSONL, CSV, Parquet (needs ``pyarrow``), plain text (a record per line, per paragraph or
per file), a directory of such files, and a directory saved by ``datasets.save_to_disk`` (needs
``datasets``). Records stream from disk; nothing here uploads, caches or logs the data itself.
"""

from __future__ import annotations

from .card import data_card, write_data_card
from .examples import Example, Examples, FORMATS, TEXT_UNITS, load_examples, normalize_label

__all__ = ["Example", "Examples", "FORMATS", "TEXT_UNITS", "data_card", "load_examples",
           "normalize_label", "write_data_card"]
