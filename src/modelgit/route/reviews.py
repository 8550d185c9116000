"""The ``reviews`` router: from review scores. Each suite of the review goes to the adapter that
scored best on it — or to the base when no adapter improved it — and an input goes where the
suite it is closest to goes (the suites' example texts embedded as in :mod:`.examples`).

Scores are ``{adapter: {suite: {"base": x, "adapter": y}}}`` as review records hold them, with
``higher_is_better`` per suite (perplexity: lower is better). A gain is relative:
``(base - adapter) / base`` when lower is better, ``(adapter - base) / base`` otherwise.
"""

from __future__ import annotations

import math

from ..errors import UsageError
from .examples import build_classes, scores  # noqa: F401  (scores: the kind's interface)
from .library import BASE
from .router import BuildRequest, Router

__all__ = ["build", "scores", "best_adapters"]


def _gain(entry, higher: bool) -> float | None:
    if not isinstance(entry, dict):
        return None
    base, adapter = entry.get("base"), entry.get("adapter")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in (base, adapter)) or base == 0:
        return None
    return (adapter - base) / abs(base) if higher else (base - adapter) / abs(base)


def best_adapters(suite_scores: dict, higher_is_better: dict, suites, names) -> dict[str, str]:
    """``{suite: adapter or "base"}``: the adapter with the largest positive gain on each suite.

    Raises:
        UsageError: a suite that no adapter has a score for.
    """
    out = {}
    for suite in suites:
        higher = bool(higher_is_better.get(suite, False))
        gains = {name: _gain((suite_scores.get(name) or {}).get(suite), higher) for name in names}
        known = {n: g for n, g in gains.items() if g is not None}
        if not known:
            raise UsageError(f"no adapter has a review score on suite {suite!r}: give scores "
                             "{adapter: {suite: {base, adapter}}} for it, or drop the suite")
        best = max(sorted(known), key=lambda n: known[n])
        out[suite] = best if known[best] > 0 else BASE
    return out


def build(runtime, request: BuildRequest) -> Router:
    """A reviews router: ``request.suites`` maps each suite to a few of its texts,
    ``request.suite_scores`` holds the review scores (see the module docstring).

    Raises:
        UsageError: no suites or scores, a suite without texts or scores, scores naming an
            adapter the library lacks.
    """
    library = runtime.library
    if not request.suites or not request.suite_scores:
        raise UsageError("the reviews router needs review scores and a few texts of each suite "
                         "(--suites FILE and --scores FILE)")
    for name in request.suite_scores:
        library.get(name)  # UsageError naming the closest adapter
    targets = best_adapters(request.suite_scores, request.higher_is_better, list(request.suites),
                            library.names)
    return build_classes(runtime, dict(request.suites), targets, request, "reviews")
