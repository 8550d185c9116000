"""The linear probe of the examples router: pinned against scikit-learn's logistic regression,
and able to separate classes a nearest centroid confuses."""

from __future__ import annotations

import pytest
import torch

from modelgit.route.probe import cross_validated_log_probs, fit_probe, probe_log_probs


def _nuisance_data(seed: int = 0, per_class: int = 40):
    """Three classes that differ only along a low-variance direction (dimension 0, steps of
    1) while two other directions vary ten times more and say nothing about the class: what the
    first layers' hidden states look like to a router (domains differ in a few directions;
    length and formatting dominate the rest)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(per_class)  # (n,)
    x = torch.randn(len(labels), 6, generator=generator) * 0.1  # (n, 6)
    x[:, 0] += labels.float()
    x[:, 1:3] += torch.randn(len(labels), 2, generator=generator) * 10.0
    return x + 5.0, labels


def test_the_fit_is_scikit_learns_logistic_regression():
    """Same objective as LogisticRegression(C=1/l2) on standardised features: same weights."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, labels = _nuisance_data()
    for l2 in (1.0, 10.0):
        probe = fit_probe(x, labels, 3, l2)
        z = ((x.double() - x.double().mean(0)) / x.double().std(0, unbiased=False)).numpy()
        reference = linear_model.LogisticRegression(C=1.0 / l2, tol=1e-10, max_iter=10_000)
        reference.fit(z, labels.numpy())
        assert probe["weight"].numpy() == pytest.approx(reference.coef_, abs=2e-3)
        # the intercept is determined up to a constant shared by the classes
        bias = probe["bias"].numpy() - probe["bias"].numpy().mean()
        assert bias == pytest.approx(reference.intercept_ - reference.intercept_.mean(), abs=2e-3)


def test_the_probe_separates_classes_a_centroid_confuses():
    x, labels = _nuisance_data(seed=0)
    test_x, test_labels = _nuisance_data(seed=1)
    probe = fit_probe(x, labels, 3)
    assert probe_log_probs(probe, test_x).argmax(1).tolist() == test_labels.tolist()
    center = x.mean(0)
    unit = torch.nn.functional.normalize(x - center, dim=-1)
    centroids = torch.nn.functional.normalize(torch.stack([unit[labels == c].mean(0)
                                                           for c in range(3)]), dim=-1)
    nearest = (torch.nn.functional.normalize(test_x - center, dim=-1) @ centroids.T).argmax(1)
    assert float((nearest == test_labels).float().mean()) < 0.8


def test_the_fit_is_deterministic_and_leaves_its_inputs_alone():
    x, labels = _nuisance_data()
    before = x.clone()
    first, second = fit_probe(x, labels, 3), fit_probe(x, labels, 3)
    assert torch.equal(x, before)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert {k: v.dtype for k, v in first.items()} == dict.fromkeys(first, torch.float32)


def test_cross_validated_log_probs_score_each_example_by_a_probe_without_it():
    x, labels = _nuisance_data(per_class=10)
    held = cross_validated_log_probs(x, labels, 3, folds=5)
    assert held.shape == (30, 3)
    assert torch.exp(held).sum(1) == pytest.approx(torch.ones(30), abs=1e-5)
    seen = probe_log_probs(fit_probe(x, labels, 3), x)
    # an example the probe saw is scored more confidently than one it did not
    assert float(seen.max(1).values.mean()) > float(held.max(1).values.mean())
