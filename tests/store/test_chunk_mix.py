"""``chunk_mix/1`` (modelgit.store._functions): a linear combination of stored chunks, the git
merge driver's average and task arithmetic; exact, and checked like every recipe."""

import numpy as np
import pytest

from modelgit.errors import CorruptObjectError
from modelgit.store._functions import chunk_mix_recipe
from modelgit.store.derived import DERIVED, InputRef, round_to

from helpers import rewrite_derived_recipe




def _chunks(store, dtype, n=3, shape=(16, 8), seed=0):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal(shape) for _ in range(n)]
    raws = [round_to(v, dtype) for v in values]
    refs = [InputRef(store.put(dtype, shape, raw).oid, dtype, shape) for raw in raws]
    return raws, refs


@pytest.mark.parametrize("dtype, numpy_name", [("F32", "<f4"), ("F16", "<f2"), ("BF16", None)])
def test_chunk_mix_is_the_float64_sum_rounded_once(store, dtype, numpy_name):
    raws, refs = _chunks(store, dtype)
    put = store.put_derived(chunk_mix_recipe(refs, [-1.0, 1.0, 1.0]), dtype, (16, 8))
    assert store.header(put.oid).encoding is DERIVED and put.stored_bytes < 600
    if numpy_name is None:
        as64 = [(np.frombuffer(r, "<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
                for r in raws]
    else:
        as64 = [np.frombuffer(r, numpy_name).astype(np.float64) for r in raws]
    expected = round_to((-as64[0] + as64[1]) + as64[2], dtype)
    store.drop_derived_cache()
    assert store.get(put.oid) == expected


def test_a_changed_coefficient_or_a_mismatched_input_fails(store):
    raws, refs = _chunks(store, "F32")
    oid = store.put_derived(chunk_mix_recipe(refs[:2], [0.5, 0.5]), "F32", (16, 8)).oid
    store.drop_derived_cache()
    rewrite_derived_recipe(store, oid, lambda body: body["params"].update(c=[(0.5).hex(), (0.25).hex()]))
    with pytest.raises(CorruptObjectError, match="does not reproduce its id"):
        store.get(oid)
    oid = store.put_derived(chunk_mix_recipe(refs[:2], [0.5, 0.5]), "F32", (16, 8)).oid
    rewrite_derived_recipe(store, oid, lambda body: body["params"].update(c=[(0.5).hex()]))
    with pytest.raises(CorruptObjectError, match="bad recipe.*one coefficient per input"):
        store.get(oid)


def test_every_registered_function_has_its_tests():
    # a function added to the registry must come with round-trip and tamper tests like these
    from modelgit.store.derived import FUNCTIONS

    tested = {"lora_merge/1": "test_derived.py", "ties_lora/1": "test_derived.py",
              "dare_lora/1": "test_dare.py", "chunk_mix/1": "test_chunk_mix.py"}
    assert set(FUNCTIONS) == set(tested)
