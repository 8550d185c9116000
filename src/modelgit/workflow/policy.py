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


def _span(score: dict) -> str:
    """`` (95% interval [-4.10%, -0.80%])`` when the score carries its gain's interval."""
    span = score.get("gain_interval")
    if not span:
        return ""
    return f" ({score.get('confidence', 0.95):.0%} interval [{span[0]:+.2%}, {span[1]:+.2%}])"


def decide(scores: dict[str, dict], policy, domain: str | None) -> tuple[str, str, list[str]]:
    """(decision, target suite, reasons) for one contribution: ``accept`` (merged by the next
    release), ``reject``, or ``specialist`` (kept in the adapter library and reached through the
    router, never merged).

    Args:
        scores: {suite: {"base", "adapter", "higher_is_better", "gain_interval"?, ...}}.
        policy: a :class:`~.project.Policy` (min_gain, max_regression, confidence,
            significant_regressions_only).
        domain: the suite the contributor said they target; otherwise the suite with the largest
            gain is the target.
    A score or gain that is not a finite number is a rejection with that reason. With
    ``policy.significant_regressions_only``, a suite that regresses by more than
    ``max_regression`` rejects only when the upper end of its gain's interval is below
    ``-max_regression`` too (a suite without an interval is judged on its point estimate).
    A contribution that would be rejected only because other suites regress, and whose target
    suite gains at least ``policy.specialist_min_gain`` (None: never), is a ``specialist``: a
    merge would spread its regressions to everyone, a router sends it only its own inputs.
    """
    gains = {s: relative_gain(v["base"], v["adapter"], v["higher_is_better"]) for s, v in scores.items()}
    broken = sorted(s for s, g in gains.items() if not math.isfinite(g))
    if broken or not gains:  # NaN compares false with every threshold: it must never pass one
        return "reject", None, [f"{s}: the score is not a finite number ({scores[s]['base']!r} -> "
                                f"{scores[s]['adapter']!r})" for s in broken] or ["no scores"]
    target = domain if domain in gains else max(sorted(gains), key=lambda s: gains[s])
    reasons, notes = [], []
    too_small = gains[target] < policy.min_gain
    if too_small:
        reasons.append(f"{target}: gain {gains[target]:+.2%}{_span(scores[target])} is below the "
                       f"required {policy.min_gain:.2%}")
    only_significant = getattr(policy, "significant_regressions_only", False)
    for suite, gain in sorted(gains.items()):
        if suite == target or gain >= -policy.max_regression:
            continue
        span = scores[suite].get("gain_interval")
        if only_significant and span and span[1] >= -policy.max_regression:
            notes.append(f"{suite}: regresses by {-gain:.2%}{_span(scores[suite])}, not "
                         f"significantly more than the allowed {policy.max_regression:.2%}")
            continue
        reasons.append(f"{suite}: regresses by {-gain:.2%}{_span(scores[suite])}, more than the "
                       f"allowed {policy.max_regression:.2%}"
                       + (" (significantly)" if only_significant and span else ""))
    if not reasons:
        reasons.append(f"{target}: gain {gains[target]:+.2%}{_span(scores[target])} >= "
                       f"{policy.min_gain:.2%}; no suite regresses by "
                       + ("significantly " if only_significant else "")
                       + f"more than {policy.max_regression:.2%}")
        return "accept", target, reasons + notes
    threshold = getattr(policy, "specialist_min_gain", None)
    if not too_small and threshold is not None and gains[target] >= threshold:
        return "specialist", target, [
            f"{target}: gain {gains[target]:+.2%}{_span(scores[target])} >= the specialist "
            f"threshold {threshold:.2%}, but merged it would regress other suites: kept in the "
            "adapter library (reached through the router), not merged", *reasons, *notes]
    return "reject", target, reasons + notes
