"""Derived objects (modelgit.store.derived): exact round trips, and every way a recipe can be
wrong failing with a clear message and never giving wrong bytes."""

import numpy as np
import pytest

from modelgit.errors import CorruptObjectError, DerivedFunctionError, ObjectMissingError, StoreError
from modelgit.store import Store, object_id
from modelgit.store._functions import lora_merge_recipe
from modelgit.store.derived import DERIVED, DERIVED_FORMAT, InputRef, Recipe, round_to

from helpers import rewrite_derived_recipe


def _put(store, array, dtype="F32"):
    data = array.astype(np.float32).tobytes() if dtype == "F32" else array
    return InputRef(store.put(dtype, tuple(array.shape), data).oid, dtype, tuple(array.shape))


def _lora(store, rows=12, cols=10, rank=4, n=2, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((rows, cols)).astype(np.float32)
    terms = []
    for i in range(n):
        a = rng.standard_normal((rank, cols)).astype(np.float32)
        b = rng.standard_normal((rows, rank)).astype(np.float32)
        terms.append((_put(store, a), _put(store, b), 0.5 + i))
    base_ref = _put(store, base)
    return base, base_ref, terms


def _expected(store, base, terms, rows):
    acc = base[rows[0]:rows[1]].astype(np.float64)
    for a, b, c in terms:
        A = np.frombuffer(store.get(a.oid), np.float32).reshape(a.shape).astype(np.float64)
        B = np.frombuffer(store.get(b.oid), np.float32).reshape(b.shape).astype(np.float64)
        acc += c * (B[rows[0]:rows[1]] @ A)
    return acc


def test_lora_merge_round_trips_exactly_and_is_stored_as_its_recipe(store):
    base, base_ref, terms = _lora(store)
    recipe = lora_merge_recipe(base_ref, (0, 12), terms)
    put = store.put_derived(recipe, "F32", (12, 10))
    assert put.written and put.encoding == "derived"
    assert store.header(put.oid).encoding is DERIVED
    assert store.stored_size(put.oid) == put.stored_bytes < 1000  # the recipe, not the bytes
    big_base, big_ref, big_terms = _lora(store, rows=256, cols=128, rank=8, n=3, seed=5)
    big = store.put_derived(lora_merge_recipe(big_ref, (0, 256), big_terms), "F32", (256, 128))
    assert big.stored_bytes < 1500 < 256 * 128 * 4 // 50
    store.drop_derived_cache()
    raw = store.get(put.oid)
    assert object_id("F32", (12, 10), raw) == put.oid
    got = np.frombuffer(raw, np.float32).reshape(12, 10)
    np.testing.assert_allclose(got, _expected(store, base, terms, (0, 12)), rtol=1e-6, atol=1e-6)
    assert store.config["format"] == DERIVED_FORMAT
    assert Store.open(store.url).holds_derived


def test_the_bytes_equal_the_reference_rounding_of_a_float64_sum(store):
    # the result is the float64 sum in rank order, rounded once: pinned against numpy here
    base, base_ref, terms = _lora(store, rank=3, n=1)
    recipe = lora_merge_recipe(base_ref, (0, 12), terms)
    raw = store.get(store.put_derived(recipe, "F32", (12, 10)).oid)
    a, b, c = terms[0]
    A = np.frombuffer(store.get(a.oid), np.float32).reshape(a.shape).astype(np.float64)
    B = np.frombuffer(store.get(b.oid), np.float32).reshape(b.shape).astype(np.float64)
    product = np.zeros((12, 10))
    for k in range(3):
        product = product + np.outer(B[:, k], A[k])
    assert raw == (base.astype(np.float64) + c * product).astype(np.float32).tobytes()


def test_rows_of_a_chunk_and_a_bf16_base(store):
    rng = np.random.default_rng(1)
    base = rng.standard_normal((8, 6))
    bits = np.frombuffer(round_to(base, "BF16"), np.uint16).reshape(8, 6)
    base_ref = InputRef(store.put("BF16", (4, 6), bits[4:8].tobytes()).oid, "BF16", (4, 6))
    a = _put(store, rng.standard_normal((2, 6)))
    b = _put(store, rng.standard_normal((8, 2)))
    put = store.put_derived(lora_merge_recipe(base_ref, (4, 8), [(a, b, 2.0)]), "BF16", (4, 6))
    store.drop_derived_cache()
    assert len(store.get(put.oid)) == 4 * 6 * 2


def test_write_refuses_a_computation_that_does_not_give_the_expected_bytes(store):
    base, base_ref, terms = _lora(store)
    recipe = lora_merge_recipe(base_ref, (0, 12), terms)
    wrong = bytearray(store.get(store.put_derived(recipe, "F32", (12, 10)).oid))
    wrong[0] ^= 1
    assert store.put_derived(recipe, "F32", (12, 10), expected=bytes(wrong)) is None




def test_a_tampered_recipe_fails_and_is_quarantined(store):
    base, base_ref, terms = _lora(store)
    oid = store.put_derived(lora_merge_recipe(base_ref, (0, 12), terms), "F32", (12, 10)).oid
    store.drop_derived_cache()
    rewrite_derived_recipe(store, oid, lambda body: body["params"]["terms"][0].update(c=(0.75).hex()))
    with pytest.raises(CorruptObjectError, match="does not reproduce its id") as info:
        store.get(oid)
    assert info.value.quarantined and not store.has(oid)


def test_a_malformed_recipe_is_corrupt(store):
    base, base_ref, terms = _lora(store)
    oid = store.put_derived(lora_merge_recipe(base_ref, (0, 12), terms), "F32", (12, 10)).oid
    rewrite_derived_recipe(store, oid, lambda body: body["params"].update(rows=[0, 99]))
    with pytest.raises(CorruptObjectError, match="bad recipe"):
        store.get(oid)


def test_a_missing_input_names_the_input(store):
    base, base_ref, terms = _lora(store)
    oid = store.put_derived(lora_merge_recipe(base_ref, (0, 12), terms), "F32", (12, 10)).oid
    store.drop_derived_cache()
    store.backend.delete(store._key(terms[1][0].oid))
    with pytest.raises(ObjectMissingError, match="an input of derived object") as info:
        store.get(oid)
    assert info.value.oid == terms[1][0].oid
    assert store.has(oid)  # not damaged: the input comes back with a fetch


def test_an_unknown_function_asks_for_an_upgrade_and_quarantines_nothing(store):
    base, base_ref, terms = _lora(store)
    oid = store.put_derived(lora_merge_recipe(base_ref, (0, 12), terms), "F32", (12, 10)).oid
    store.drop_derived_cache()
    rewrite_derived_recipe(store, oid, lambda body: body.update(fn="lora_merge/9"))
    with pytest.raises(DerivedFunctionError, match="upgrade modelgit"):
        store.get(oid)
    assert store.has(oid)
    # its inputs are still known to gc and transfers
    assert set(store.derived_inputs(oid)) == {base_ref.oid} | {r.oid for t in terms for r in t[:2]}


def test_the_cache_is_verified_and_recomputed_when_damaged(store):
    base, base_ref, terms = _lora(store)
    oid = store.put_derived(lora_merge_recipe(base_ref, (0, 12), terms), "F32", (12, 10)).oid
    good = store.get(oid)
    key = f"cache/derived/{oid}"
    assert store.backend.exists(key)
    store.backend.write_atomic(key, b"\0" * len(good))
    assert store.get(oid) == good
    assert store.backend.read(key) == good


def test_gc_keeps_the_inputs_of_a_kept_derived_object(store):
    base, base_ref, terms = _lora(store)
    oid = store.put_derived(lora_merge_recipe(base_ref, (0, 12), terms), "F32", (12, 10)).oid
    store.drop_derived_cache()
    result = store.gc({oid})
    assert result.removed == 0 and result.kept == 6  # itself, the base, two A and two B
    assert store.get(oid)
    store.gc(set())
    assert not list(store.iter_objects()) and not list(store.backend.list("cache/derived"))


def test_a_derived_object_is_never_a_delta_parent(store):
    base, base_ref, terms = _lora(store)
    oid = store.put_derived(lora_merge_recipe(base_ref, (0, 12), terms), "F32", (12, 10)).oid
    nearby = bytearray(store.get(oid))
    nearby[0] ^= 1
    put = store.put("F32", (12, 10), bytes(nearby), parent=oid)
    assert store.header(put.oid).parent is None


def test_an_old_reader_refuses_a_store_with_derived_objects(store, monkeypatch):
    base, base_ref, terms = _lora(store)
    store.put_derived(lora_merge_recipe(base_ref, (0, 12), terms), "F32", (12, 10))
    import modelgit.store.store as module

    monkeypatch.setattr(module, "MAX_FORMAT", 2)  # what a modelgit before derived objects reads
    with pytest.raises(StoreError, match="upgrade modelgit"):
        Store.open(store.url)


def test_a_release_on_a_derived_base_chains_and_a_loop_of_recipes_fails(store):
    base, base_ref, terms = _lora(store)
    oid = store.put_derived(lora_merge_recipe(base_ref, (0, 12), terms), "F32", (12, 10)).oid
    derived_ref = InputRef(oid, "F32", (12, 10))
    second = store.put_derived(lora_merge_recipe(derived_ref, (0, 12), terms), "F32", (12, 10))
    store.drop_derived_cache()
    assert object_id("F32", (12, 10), store.get(second.oid)) == second.oid
    assert store.gc({second.oid}).removed == 0  # the first release and its inputs are kept
    # a forged pair of recipes naming each other: refused, never a loop
    rewrite_derived_recipe(store, oid, lambda body: body["inputs"][0].update(id=second.oid))
    store.drop_derived_cache()
    with pytest.raises(CorruptObjectError, match="derived more than 8 deep"):
        store.get(second.oid)


def test_unknown_function_in_a_new_recipe_is_refused(store):
    base, base_ref, terms = _lora(store)
    with pytest.raises(DerivedFunctionError, match="upgrade"):
        store.put_derived(Recipe("nosuch/1", (base_ref,), {}), "F32", (12, 10))


def test_inputs_written_in_the_same_batch_are_read_back(store):
    with store.writing():  # staged writes: visible only once flushed
        base, base_ref, terms = _lora(store)
        put = store.put_derived(lora_merge_recipe(base_ref, (0, 12), terms), "F32", (12, 10))
    store.drop_derived_cache()
    assert object_id("F32", (12, 10), store.get(put.oid)) == put.oid


def _ties_reference(base, deltas, weights, densities, lam):
    """TIES as the paper and modelgit.merge's ties define it, on whole float64 tensors."""
    kept = []
    for d, w, density in zip(deltas, weights, densities):
        k = max(1, int(density * d.size))
        threshold = np.sort(np.abs(d).ravel())[::-1][k - 1]
        kept.append(np.where(np.abs(d) >= threshold, d, 0.0) * w)
    positive = sum(kept) >= 0
    agree = [np.where(positive, x > 0, x < 0) for x in kept]
    merged = sum(np.where(a, x, 0.0) for a, x in zip(agree, kept))
    divisor = sum(np.where(a, w, 0.0) for a, w in zip(agree, weights))
    divisor[divisor == 0] = 1.0
    return base.astype(np.float64) + lam * merged / divisor


def test_ties_lora_matches_a_reference_and_is_chunk_local(store):
    from modelgit.store._functions import lora_product, ties_lora_recipe, ties_threshold

    base, base_ref, terms = _lora(store, rows=40, cols=16, rank=4, n=3, seed=3)
    weights, densities = [1.0, 0.5, 2.0], [0.5, 0.3, 0.9]
    arrays = [(np.frombuffer(store.get(a.oid), np.float32).reshape(a.shape),
               np.frombuffer(store.get(b.oid), np.float32).reshape(b.shape)) for a, b, _c in terms]
    deltas = [lora_product(a, b, c) for (a, b), (_A, _B, c) in zip(arrays, terms)]
    thresholds = [ties_threshold(np.abs(d), dens) for d, dens in zip(deltas, densities)]
    full = [(a, b, c, w, t) for (a, b, c), w, t in zip(terms, weights, thresholds)]
    expected = _ties_reference(base, deltas, weights, densities, 0.8).astype(np.float32)
    # two chunks of rows, each computed from its own rows of the base and B
    for r0, r1 in ((0, 25), (25, 40)):
        chunk = base[r0:r1]
        ref = InputRef(store.put("F32", chunk.shape, chunk.tobytes()).oid, "F32", chunk.shape)
        put = store.put_derived(ties_lora_recipe(ref, (r0, r1), full, 0.8, True), "F32", chunk.shape)
        store.drop_derived_cache()
        got = np.frombuffer(store.get(put.oid), np.float32).reshape(chunk.shape)
        np.testing.assert_array_equal(got, expected[r0:r1])
