"""The linear-time emulation of torch's sort selects exactly the entries the sort puts first."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from modelgit.merge.methods import _sortselect, _sparsify
from modelgit.merge.methods._sortselect import emulation_matches, first_k_mask


def _sorted_first(values: np.ndarray, k: int, descending: bool = True) -> np.ndarray:
    order = torch.sort(torch.from_numpy(values.copy()), descending=descending, stable=False).indices
    mask = np.zeros(values.size, dtype=bool)
    mask[order[:k].numpy()] = True
    return mask


@st.composite
def tied_arrays(draw):
    """Arrays with many exact ties (few distinct values), sometimes presorted, and a k."""
    n = draw(st.integers(0, 2500))
    levels = draw(st.integers(1, 60))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    values = (rng.integers(-levels, levels + 1, n) / 7).astype(dtype)
    order = draw(st.sampled_from(["random", "ascending", "descending", "organ"]))
    if order == "ascending":
        values.sort()
    elif order == "descending":
        values = np.sort(values)[::-1].copy()
    elif order == "organ":  # up then down: a classic bad case for median-of-three pivots
        values.sort()
        values = np.concatenate([values[::2], values[1::2][::-1]])
    return values, draw(st.integers(0, n)), order


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tied_arrays())
def test_first_k_is_the_sorts_first_k(case):
    values, k, order = case
    got = first_k_mask(values.copy(), k)
    if got is None:
        # only inputs built to defeat median-of-three pivots push the sort into its heap sort
        assert order == "organ"
        return
    np.testing.assert_array_equal(got, _sorted_first(values, k))


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 18, 33, 1000, 100_003])
def test_sizes_around_the_insertion_sort_threshold(n):
    rng = np.random.default_rng(n)
    values = rng.integers(0, 3, n).astype(np.float32)  # three values: ties everywhere
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        np.testing.assert_array_equal(first_k_mask(values.copy(), k), _sorted_first(values, k))


def test_signed_zeros_infinities_and_real_task_vectors():
    rng = np.random.default_rng(5)
    values = np.concatenate([np.zeros(40), -np.zeros(40), np.full(9, np.inf), np.full(9, -np.inf),
                             rng.standard_normal(300)]).astype(np.float32)
    rng.shuffle(values)
    for k in (1, 40, 80, 200, 397):
        np.testing.assert_array_equal(first_k_mask(values.copy(), k), _sorted_first(values, k))
    # a float32 task vector as TIES sees it: base + noise rounded to a grid, minus base
    base = (0.02 * rng.standard_normal(200_000)).astype(np.float32)
    tuned = base + (np.round(rng.standard_normal(200_000) * 8) * 2e-5).astype(np.float32)
    magnitudes = np.abs(tuned - base)
    k = magnitudes.size // 2
    expected = _sorted_first(magnitudes, k)
    assert (magnitudes == np.sort(magnitudes)[::-1][k - 1]).sum() > 1000  # ties at the threshold
    np.testing.assert_array_equal(first_k_mask(magnitudes, k), expected)


def test_this_torch_sorts_as_emulated():
    assert emulation_matches()


@pytest.mark.parametrize("method,extra", [("magnitude", {}), ("magnitude_outliers", {"gamma": 0.1})])
@pytest.mark.parametrize("rescale", [False, True])
def test_selection_falls_back_to_the_sort(monkeypatch, method, extra, rescale):
    """Where the emulation gives up (the sort's heap-sort fallback), torch.sort decides, and the
    magnitudes it scrambled meanwhile are not used."""
    rng = np.random.default_rng(3)
    delta = torch.from_numpy((rng.integers(-20, 21, (64, 50)) / 3).astype(np.float32))
    expected = _sparsify.sparsify(delta, method, density=0.4, rescale=rescale, **extra)

    def give_up(values, k):
        values[:] = 0  # scrambled, as a partial run leaves them
        return None

    monkeypatch.setattr(_sparsify, "first_k_mask", give_up)
    assert torch.equal(_sparsify.sparsify(delta, method, density=0.4, rescale=rescale, **extra), expected)
    monkeypatch.setattr(_sparsify, "emulation_matches", lambda: False)
    assert torch.equal(_sparsify.sparsify(delta, method, density=0.4, rescale=rescale, **extra), expected)


@pytest.mark.parametrize("density,gamma", [(0.5, 0.01), (0.3, 0.3), (0.9, 0.2), (0.0, 0.1)])
def test_outlier_band_is_the_sorts(density, gamma):
    rng = np.random.default_rng(9)
    magnitudes = (rng.integers(0, 12, 5000) / 4).astype(np.float32)
    n = magnitudes.size
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)
    order = torch.sort(torch.from_numpy(magnitudes.copy()), stable=False).indices.numpy()
    expected = np.zeros(n, dtype=bool)
    expected[order[bottom:bottom + keep]] = True
    got = _sparsify._emulated(magnitudes.copy(), False, bottom, bottom + keep, keep_values=False)
    np.testing.assert_array_equal(got, expected)


def test_depth_limit_gives_up(monkeypatch):
    """After 2 floor(log2 n) partitions the sort heap-sorts what is left: not emulated."""
    values = np.arange(1000, dtype=np.float32)
    assert _sortselect._depth_limit(1000) == 18
    assert first_k_mask(values.copy(), 500) is not None
    monkeypatch.setattr(_sortselect, "_depth_limit", lambda n: 2)
    assert first_k_mask(values.copy(), 3) is None
    assert first_k_mask(values[:17].copy(), 5) is not None  # one partition, then the insertion sort


def test_pairs_found_a_chunk_at_a_time(monkeypatch):
    """The swaps are applied a chunk of pairs at a time: chunks of 5 give the same sets."""
    monkeypatch.setattr(_sortselect, "_PAIR_CHUNK", 5)
    rng = np.random.default_rng(11)
    for n, levels in ((100, 3), (1000, 40), (20_000, 7)):
        values = rng.integers(0, levels, n).astype(np.float32)
        for k in (1, n // 3, n // 2, n - 1):
            np.testing.assert_array_equal(first_k_mask(values.copy(), k), _sorted_first(values, k))
