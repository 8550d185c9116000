"""Example texts of routers: a few per adapter (``--examples NAME=FILE``) or per suite."""

from __future__ import annotations

from ..errors import UsageError

__all__ = ["read_texts", "suite_texts", "DEFAULT_EXAMPLES"]

#: texts read per adapter or suite by default (a router needs a few, not a data set)
DEFAULT_EXAMPLES = 50


def read_texts(path: str, limit: int | None = DEFAULT_EXAMPLES, text_field: str = "text",
               text_unit: str = "line") -> list[str]:
    """The first ``limit`` non-empty texts of ``path``: JSONL with a ``text`` field per line,
    a text file (a text per line), CSV, Parquet or a directory of them (as ``modelgit train``
    reads data).

    Raises:
        UsageError: unreadable, or no text in it.
    """
    from ..data import load_examples

    texts = []
    for example in load_examples(path, text_field, text_unit=text_unit):
        if example.text and example.text.strip():
            texts.append(example.text)
            if limit and len(texts) >= limit:
                break
    if not texts:
        raise UsageError(f"{path!r} holds no text (a text per line, or JSONL with a "
                         f"{text_field!r} field)")
    return texts


def suite_texts(suite, limit: int | None = DEFAULT_EXAMPLES) -> list[str]:
    """A few texts of an evaluation suite for routing: its ``validation`` data when it has some
    (so that the held-out data stays unseen by the router), else its data."""
    return read_texts(suite.validation or suite.data, limit, suite.text_field, suite.text_unit)
