"""The acceptance policy: relative gains per suite, the target suite, the decision."""

from __future__ import annotations

import math

__all__ = ["relative_gain", "decide"]


def relative_gain(base: float, value: float, higher_is_better: bool) -> float:
    """How much better ``value`` is than ``base``, relative to ``base`` (0.05 = 5 % better;
    negative when worse): perplexity falling from 10 to 9 is 0.1, accuracy rising 0.8 -> 0.88 too.
    NaN when either is NaN (callers check: :func:`decide` rejects it)."""
    scale = abs(base) if base else 1.0
    return ((value - base) if higher_is_better else (base - value)) / scale


def decide(scores: dict[str, dict], policy, domain: str | None) -> tuple[str, str, list[str]]:
    """(decision, target suite, reasons) for one contribution.

    Args:
        scores: {suite: {"base", "adapter", "higher_is_better", ...}}.
        policy: a :class:`~.project.Policy` (min_gain, max_regression).
        domain: the suite the contributor said they target; otherwise the suite with the largest
            gain is the target.
    A score or gain that is not a finite number is a rejection with that reason.
    """
    gains = {s: relative_gain(v["base"], v["adapter"], v["higher_is_better"]) for s, v in scores.items()}
    broken = sorted(s for s, g in gains.items() if not math.isfinite(g))
    if broken or not gains:  # NaN compares false with every threshold: it must never pass one
        return "reject", None, [f"{s}: the score is not a finite number ({scores[s]['base']!r} -> "
                                f"{scores[s]['adapter']!r})" for s in broken] or ["no scores"]
    target = domain if domain in gains else max(sorted(gains), key=lambda s: gains[s])
    reasons = []
    if gains[target] < policy.min_gain:
        reasons.append(f"{target}: gain {gains[target]:+.2%} is below the required {policy.min_gain:.2%}")
    for suite, gain in sorted(gains.items()):
        if suite != target and gain < -policy.max_regression:
            reasons.append(f"{suite}: regresses by {-gain:.2%}, more than the allowed "
                           f"{policy.max_regression:.2%}")
    if not reasons:
        reasons.append(f"{target}: gain {gains[target]:+.2%} >= {policy.min_gain:.2%}; no suite "
                       f"regresses by more than {policy.max_regression:.2%}")
        return "accept", target, reasons
    return "reject", target, reasons
