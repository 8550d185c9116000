"""Evaluations of a base model, remembered: review and release (and the next review) evaluate
the same base on the same suites, so the result is kept in ``.git/modelgit/eval-cache/`` under
a key of the base's fingerprint, the suite's settings and the SHA-256 of its data. Any change
to the weights, the settings or a byte of the data gives a new key; the cache is local (the
held-out data's scores never leave the maintainer's machine through it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict

from .._files import write_json

__all__ = ["evaluate_base", "cached_base", "remember_base"]

_VERSION = 2  # 2: results carry their per-document parts (for bootstrap intervals)


def _key(fingerprint: str, suite) -> str:
    from ..data import data_card

    settings = {k: v for k, v in asdict(suite).items() if k not in ("data", "validation")}
    data = data_card(suite.data, suite.text_field, suite.label_field, suite.text_unit)["sha256"]
    text = json.dumps({"v": _VERSION, "base": fingerprint, "suite": settings, "data": data},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _folder(repo) -> str:
    folder = os.path.join(repo.git_dir, "modelgit", "eval-cache")
    os.makedirs(folder, exist_ok=True)
    return folder


def cached_base(repo, fingerprint: str, suites) -> tuple[list, list[int]]:
    """(results, missing): the cached result of each suite (None where there is none) and the
    indices of the suites still to evaluate."""
    folder = _folder(repo)
    results: list = [None] * len(suites)
    for i, suite in enumerate(suites):
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(folder, f"{_key(fingerprint, suite)}.json"), encoding="utf-8") as handle:
                results[i] = json.load(handle)
    return results, [i for i, r in enumerate(results) if r is None]


def remember_base(repo, fingerprint: str, suites, missing: list[int], fresh: list[dict],
                  results: list) -> None:
    """Put the ``fresh`` results of the ``missing`` suites into ``results`` and the cache."""
    folder = _folder(repo)
    for i, result in zip(missing, fresh):
        results[i] = result
        write_json(os.path.join(folder, f"{_key(fingerprint, suites[i])}.json"), result)


def evaluate_base(repo, base_dir: str, fingerprint: str, suites, progress=False) -> list[dict]:
    """``evaluate_suites(base_dir, None, suites)``, from the cache where the same base was
    evaluated on the same suite and data before."""
    from ..eval import evaluate_suites

    results, missing = cached_base(repo, fingerprint, suites)
    for i in range(len(suites)):
        if results[i] is not None:
            results[i] = {**results[i], "model": base_dir}
    if missing:
        fresh = evaluate_suites(base_dir, None, [suites[i] for i in missing], progress)
        remember_base(repo, fingerprint, suites, missing, fresh, results)
    return results
