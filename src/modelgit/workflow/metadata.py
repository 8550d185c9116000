"""The metadata of a contribution, checked as untrusted data.

``modelgit train`` writes ``data_card.json``, ``metrics.json``, ``training_config.json`` (and
``labels.json`` for a classifier) beside the adapter; ``modelgit contribute`` adds
``contribution.json``. Reviews, release records and model cards copy parts of them, and review
prints some to the maintainer's terminal, so each is checked for its shape, every number in it
is finite and of a sane magnitude (the strict JSON loader already refuses ``NaN`` and
``Infinity``), and every text that is shown is plain (no terminal escapes).
"""

from __future__ import annotations

import re

from ..adapters.loading import labels_problems
from ..untrusted import number_problem, text_problem

__all__ = ["MAX_METADATA_NUMBER", "metadata_problems", "record_problems", "data_card_problems"]

#: no count, size, loss or rate in metadata comes near this; beyond it a number is a mistake or
#: an attempt to overflow whatever adds it up later
MAX_METADATA_NUMBER = 1e15
_HEX = re.compile(r"^[0-9a-f]{40,64}$")
_AUTHOR = re.compile(r"^[^<>]+ <[^<>@\s]+@[^<>\s]+>$")


def _numbers_problems(value, where: str) -> list[str]:
    """Every number anywhere in ``value`` must be within +-MAX_METADATA_NUMBER (walked with a
    stack, not recursion; the loader has bounded the depth already)."""
    stack, problems = [(value, where)], []
    while stack and len(problems) < 5:
        item, path = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, f"{path}.{str(k)[:40]}") for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            problem = number_problem(item, path, -MAX_METADATA_NUMBER, MAX_METADATA_NUMBER)
            if problem:
                problems.append(problem)
    return problems


def data_card_problems(card, where: str) -> list[str]:
    """A data card (``data_card.json``, or the ``data_card`` of ``contribution.json``): the
    counts and the hash a model card shows."""
    if not isinstance(card, dict):
        return [f"{where}: expected a JSON object"]
    problems = [p for key in ("records", "bytes") if key in card
                for p in [number_problem(card[key], f"{where}: {key}", 0, MAX_METADATA_NUMBER,
                                         integer=True)] if p]
    if "sha256" in card and not (isinstance(card["sha256"], str) and _HEX.match(card["sha256"])):
        problems.append(f"{where}: sha256 is not a hex digest")
    return problems


def metadata_problems(name: str, value) -> list[str]:
    """Problems of one parsed metadata file of an adapter directory (``name``: its file name)."""
    if not isinstance(value, dict):
        return [f"{name}: expected a JSON object"]
    problems = _numbers_problems(value, name)
    if name == "data_card.json":
        problems += data_card_problems(value, name)
    elif name == "labels.json":
        problems += [f"labels.json: {p}" for p in labels_problems(value)]
    elif name == "training_config.json":
        resolved = value.get("resolved")
        if resolved is not None and not isinstance(resolved, dict):
            problems.append("training_config.json: resolved is not a JSON object")
        elif resolved and resolved.get("base_fingerprint") is not None and not (
                isinstance(resolved["base_fingerprint"], str)
                and _HEX.match(resolved["base_fingerprint"])):
            problems.append("training_config.json: resolved.base_fingerprint is not a hex id")
    return problems


def record_problems(record, name: str) -> list[str]:
    """Problems of a ``contribution.json`` read from a contribution branch named ``name``: the
    fields review relies on and reveals (author, message, domain, base revision and
    fingerprint, data card)."""
    where = "contribution.json"
    if not isinstance(record, dict):
        return [f"{where}: expected a JSON object"]
    problems = _numbers_problems(record, where)
    if record.get("contribution_version") != 1:
        problems.append(f"{where}: contribution_version is {str(record.get('contribution_version'))[:20]!r}, "
                        "not 1 (written by a newer modelgit? upgrade)")
    if record.get("name") != name:
        problems.append(f"{where}: name {str(record.get('name'))[:70]!r} is not the branch's name "
                        f"{name!r}")
    author = record.get("author")
    problem = text_problem(author, f"{where}: author", 200)
    if problem is None and not _AUTHOR.match(author):
        problem = f"{where}: author {author[:70]!r} is not of the form 'Name <email>'"
    problems += [p for p in (problem,
                             text_problem(record.get("message"), f"{where}: message", 10_000,
                                          multiline=True),
                             None if record.get("domain") is None else
                             text_problem(record.get("domain"), f"{where}: domain", 100)) if p]
    for key in ("base_revision", "base_fingerprint"):
        if not (isinstance(record.get(key), str) and _HEX.match(record[key])):
            problems.append(f"{where}: {key} is missing or not a hex id")
    if record.get("data_card") is not None:
        problems += data_card_problems(record["data_card"], f"{where}: data_card")
    for key in ("metrics", "training", "adapter"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            problems.append(f"{where}: {key} is not a JSON object")
    return problems
