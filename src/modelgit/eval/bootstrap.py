"""Confidence intervals of evaluation scores: the bootstrap over documents.

A suite's score is computed from per-document parts (for perplexity each document's summed
negative log-likelihood and token count; for accuracy and macro-F1 each document's label and
prediction). Resampling the documents with replacement and recomputing the score gives its
spread; the interval is the central ``confidence`` share of the resampled scores (percentile
bootstrap). Two models evaluated on the same documents are resampled *together* (the same
documents in each resample), so the interval of the relative gain accounts for the two scores
moving together: a hard document is hard for both.

Resampling is seeded (``seed``, default 0): the same evaluation always gives the same interval,
so a policy decision that depends on one is reproducible.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RESAMPLES", "score_of", "interval", "gain_interval", "resampled_scores"]

#: resamples per interval: enough for a stable 95 % interval (about +-0.5 % of its width)
RESAMPLES = 1000
#: index entries drawn per block (bounds the memory of a bootstrap over many documents)
_BLOCK = 4_000_000


def score_of(documents: dict, metric: str) -> float:
    """The suite's score recomputed from its per-document parts (as the evaluation computed it)."""
    return float(_scores(_arrays(documents), metric, np.arange(_size(documents))[None, :])[0])


def _size(documents: dict) -> int:
    return len(documents["tokens"] if "tokens" in documents else documents["labels"])


def _arrays(documents: dict) -> dict:
    return {k: np.asarray(v, dtype=np.float64 if k == "nll" else np.int64) for k, v in documents.items()}


def _scores(docs: dict, metric: str, idx: np.ndarray) -> np.ndarray:
    """The metric of each resample; ``idx`` is (resamples, documents) of document indices."""
    if metric == "perplexity":
        return np.exp(docs["nll"][idx].sum(1) / np.maximum(docs["tokens"][idx].sum(1), 1))
    labels, predictions = docs["labels"][idx], docs["predictions"][idx]  # (resamples, docs)
    if metric == "accuracy":
        return (labels == predictions).mean(1)
    if metric == "macro_f1":  # as metrics.macro_f1: over the classes present in the resample
        total = np.zeros(len(idx))
        present = np.zeros(len(idx))
        for cls in np.union1d(docs["labels"], docs["predictions"]):
            is_label, is_pred = labels == cls, predictions == cls
            tp = (is_label & is_pred).sum(1)
            denominator = is_label.sum(1) + is_pred.sum(1)  # 2·TP + FP + FN
            here = denominator > 0
            total += np.where(here, 2 * tp / np.maximum(denominator, 1), 0.0)
            present += here
        return total / np.maximum(present, 1)
    raise ValueError(f"no bootstrap for metric {metric!r}")


def resampled_scores(documents: list[dict], metric: str, resamples: int = RESAMPLES,
                     seed: int = 0) -> list[np.ndarray]:
    """The metric of each model in ``documents`` (per-document parts of models evaluated on the
    same documents) over the same ``resamples`` resamples: one array per model."""
    n = _size(documents[0])
    if any(_size(d) != n for d in documents):
        raise ValueError("paired resampling needs the same documents for every model")
    rng = np.random.default_rng(seed)
    arrays = [_arrays(d) for d in documents]
    out: list[list[np.ndarray]] = [[] for _ in documents]
    block = max(1, _BLOCK // max(1, n))
    for start in range(0, resamples, block):
        idx = rng.integers(0, n, size=(min(block, resamples - start), n))  # (block, docs)
        for parts, docs in zip(out, arrays):
            parts.append(_scores(docs, metric, idx))
    return [np.concatenate(parts) for parts in out]


def _bounds(values: np.ndarray, confidence: float) -> list[float]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return [float(low), float(high)]


def interval(documents: dict, metric: str, confidence: float = 0.95,
             resamples: int = RESAMPLES, seed: int = 0) -> list[float] | None:
    """``[low, high]``: the ``confidence`` percentile interval of the suite's score, or None
    when there are fewer than 2 documents (nothing to resample)."""
    if _size(documents) < 2:
        return None
    return _bounds(resampled_scores([documents], metric, resamples, seed)[0], confidence)


def gain_interval(base: dict, other: dict, metric: str, higher_is_better: bool,
                  confidence: float = 0.95, resamples: int = RESAMPLES,
                  seed: int = 0) -> list[float] | None:
    """``[low, high]``: the interval of the relative gain of ``other`` over ``base`` (as
    :func:`modelgit.workflow.policy.relative_gain`: 0.05 is 5 % better), both resampled on the
    same documents; None with fewer than 2 documents or when they differ."""
    if _size(base) < 2 or _size(base) != _size(other):
        return None
    b, o = resampled_scores([base, other], metric, resamples, seed)
    scale = np.where(b != 0, np.abs(b), 1.0)
    gains = ((o - b) if higher_is_better else (b - o)) / scale
    return _bounds(gains[np.isfinite(gains)], confidence) if np.isfinite(gains).any() else None
