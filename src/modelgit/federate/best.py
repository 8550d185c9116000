"""The best round of a federated run: the one the maintainer's held-out suites score best.

With a large server step the late rounds of a run can oscillate around the optimum, so the round
to contribute is not blindly the last. Every round's record carries its evaluation and the
base's, so rounds are compared on what is already committed: by their mean relative gain over
the base across the suites (``(base - value) / base`` for perplexity, ``(value - base) / base``
for accuracy), so that no suite's scale drowns another's. Only rounds evaluated on the same
suites as the last one are compared.
"""

from __future__ import annotations

import math

from ..untrusted import loads_json
from .history import MAX_RECORD_BYTES, branch_of, round_path

__all__ = ["round_history", "mean_gain", "best_round"]

_MAX_ROUNDS = 100_000  # a walk down a branch stops here whatever the records say


def round_history(repo, run: str) -> list[tuple[str, dict]]:
    """``(commit, record)`` of every round on ``fed/<run>``, round 1 first: the branch's
    first-parent line from its tip down to the first commit without a round record."""
    out: list[tuple[str, dict]] = []
    commit = repo.rev_parse(f"refs/heads/{branch_of(run)}")
    while commit and len(out) < _MAX_ROUNDS:
        spec = f"{commit}:{round_path(run)}/round.json"
        blob = repo.read_blob(spec)
        if blob is None:
            break
        record = loads_json(blob, spec, max_bytes=MAX_RECORD_BYTES)
        if not isinstance(record, dict) or not isinstance(record.get("round"), int):
            break
        out.append((commit, record))
        if record["round"] <= 1:
            break
        commit = repo.rev_parse(f"{commit}^")
    return out[::-1]


def _number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def mean_gain(record: dict) -> tuple[float, frozenset] | None:
    """(the mean relative gain of the round over the base, the suites it covers), or None when
    no suite of the round has a usable score beside the base's."""
    from ..eval.suites import METRICS

    base = {e.get("suite"): e for e in ((record.get("base") or {}).get("evaluation") or [])
            if isinstance(e, dict)}
    gains = {}
    for entry in record.get("evaluation") or []:
        if not isinstance(entry, dict) or entry.get("metric") not in METRICS:
            continue
        value = _number(entry.get("value"))
        before = _number((base.get(entry.get("suite")) or {}).get("value"))
        if value is None or not before:
            continue
        higher = METRICS[entry["metric"]][1]
        gains[entry["suite"]] = (value - before if higher else before - value) / abs(before)
    return (sum(gains.values()) / len(gains), frozenset(gains)) if gains else None


def best_round(history: list[tuple[str, dict]]) -> dict | None:
    """``{"round", "commit", "mean_gain", "last_round", "last_mean_gain", "suites"}``: the round of
    ``history`` (see :func:`round_history`) with the largest mean gain (the later of equal
    ones), among the rounds evaluated on the last round's suites; None without evaluations."""
    if not history:
        return None
    last = mean_gain(history[-1][1])
    if last is None:
        return None
    scored = [(gain[0], record["round"], commit) for commit, record in history
              if (gain := mean_gain(record)) is not None and gain[1] == last[1]]
    gain, number, commit = max(scored, key=lambda item: (item[0], item[1]))
    return {"round": number, "commit": commit, "mean_gain": gain,
            "last_round": history[-1][1]["round"], "last_mean_gain": last[0],
            "suites": sorted(last[1])}
