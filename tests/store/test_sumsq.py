"""The sum-of-squares hint of an object: correct for large values, absent for non-finite ones."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from modelgit.store.encodings import sum_of_squares


def _bf16(values: np.ndarray) -> bytes:
    return (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


@pytest.mark.parametrize("dtype, encode", [
    ("F32", lambda v: v.astype("<f4").tobytes()),
    ("BF16", _bf16),
])
def test_large_values_do_not_overflow(dtype, encode):
    values = np.full(1000, 3e20, dtype=np.float64)  # squares overflow float32 (max ~3.4e38)
    values[::2] = -2e20
    raw = encode(values)
    exact = float(np.sum(np.frombuffer(raw, "<f4").astype(np.float64) ** 2)) if dtype == "F32" \
        else float(np.sum(((np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
                           .astype(np.float64)) ** 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "overflow encountered in dot" fails the test
        got = sum_of_squares(raw, dtype)
    assert got == pytest.approx(exact, rel=1e-6)


def test_float64_beyond_its_range_and_non_finite_values_have_no_hint():
    huge = np.full(4, 1e200, dtype="<f8").tobytes()  # 4e400: no float64 holds it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sum_of_squares(huge, "F64") is None
        assert sum_of_squares(np.array([1.0, np.inf], "<f4").tobytes(), "F32") is None
        assert sum_of_squares(np.array([1.0, np.nan], "<f4").tobytes(), "F32") is None
    assert sum_of_squares(np.array([3.0, 4.0], "<f4").tobytes(), "F32") == 25.0


def test_the_stored_hint_matches_the_values(store):
    values = np.full((64, 64), 1e20, dtype="<f4")
    oid = store.put("F32", (64, 64), values.tobytes()).oid
    assert store.header(oid).sumsq == pytest.approx(64 * 64 * 1e40, rel=1e-6)
