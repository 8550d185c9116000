"""Bootstrap intervals over documents: pinned against direct recomputation, seeded, paired."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from modelgit.eval import accuracy, macro_f1
from modelgit.eval.bootstrap import _arrays, _scores, gain_interval, interval, score_of
from modelgit.eval.metrics import perplexity_of


def test_scores_recompute_the_metrics():
    nll, tokens = [2.0, 9.0, 4.5], [2, 5, 3]
    assert score_of({"nll": nll, "tokens": tokens}, "perplexity") == pytest.approx(
        perplexity_of(nll, tokens)["perplexity"])
    labels, predictions = [0, 0, 1, 2, 2, 1], [0, 1, 1, 2, 0, 1]
    docs = {"labels": labels, "predictions": predictions}
    assert score_of(docs, "accuracy") == pytest.approx(accuracy(labels, predictions))
    assert score_of(docs, "macro_f1") == pytest.approx(macro_f1(labels, predictions))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=20),
       st.lists(st.integers(0, 10_000), min_size=1, max_size=20))
def test_vectorised_macro_f1_equals_the_reference_on_any_resample(pairs, picks):
    labels, predictions = [a for a, _ in pairs], [b for _, b in pairs]
    idx = np.array([[p % len(pairs) for p in picks]])
    got = _scores(_arrays({"labels": labels, "predictions": predictions}), "macro_f1", idx)[0]
    assert got == pytest.approx(macro_f1([labels[i] for i in idx[0]], [predictions[i] for i in idx[0]]))


def test_interval_is_seeded_and_shrinks_with_more_documents():
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 50, 400).tolist()
    nll = [t * float(rng.uniform(1.5, 2.5)) for t in tokens]
    small = {"nll": nll[:20], "tokens": tokens[:20]}
    large = {"nll": nll, "tokens": tokens}
    a, b = interval(small, "perplexity"), interval(small, "perplexity")
    assert a == b and a[0] < score_of(small, "perplexity") < a[1]
    c = interval(large, "perplexity")
    assert c[1] - c[0] < (a[1] - a[0]) / 2
    assert interval({"nll": [1.0], "tokens": [3]}, "perplexity") is None
    assert interval(small, "perplexity", seed=7) != a  # the seed is the only randomness


def test_paired_gain_interval():
    rng = np.random.default_rng(2)
    tokens = rng.integers(5, 50, 200).tolist()
    base = {"nll": [t * float(rng.uniform(1.0, 3.0)) for t in tokens], "tokens": tokens}
    assert gain_interval(base, base, "perplexity", False) == [0.0, 0.0]
    better = {"nll": [v * 0.9 for v in base["nll"]], "tokens": tokens}  # 10 % lower loss
    low, high = gain_interval(base, better, "perplexity", False)
    point = (score_of(base, "perplexity") - score_of(better, "perplexity")) / score_of(base, "perplexity")
    # every document improves by the same factor: pairing leaves almost no spread
    assert low <= point <= high and high - low < 0.02 and low > 0
    noisy = {"nll": [v * float(rng.uniform(0.7, 1.3)) for v in base["nll"]], "tokens": tokens}
    low2, high2 = gain_interval(base, noisy, "perplexity", False)
    assert high2 - low2 > high - low
    assert gain_interval(base, {"nll": [1.0], "tokens": [2]}, "perplexity", False) is None
    assert math.isfinite(low2)
