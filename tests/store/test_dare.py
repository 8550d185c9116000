"""``dare_lora/1`` (modelgit.store._dare): DARE over LoRA task vectors with a drop mask modelgit
computes itself; round trips exact, chunk-local, and a recipe's seed cannot be changed unseen."""

import numpy as np
import pytest

from modelgit.errors import CorruptObjectError
from modelgit.store import object_id
from modelgit.store._dare import dare_keep, dare_lora_recipe, dare_seed
from modelgit.store._functions import lora_product
from modelgit.store.derived import DERIVED, InputRef

from helpers import rewrite_derived_recipe

MASK = (1 << 64) - 1


def _lora(store, rows, cols, rank, n, seed):
    """(base, its ref, [(A ref, B ref, coefficient)]): a base and ``n`` stored LoRA factors."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((rows, cols)).astype(np.float32)
    terms = []
    for i in range(n):
        refs = []
        for shape in ((rank, cols), (rows, rank)):
            x = rng.standard_normal(shape).astype(np.float32)
            refs.append(InputRef(store.put("F32", shape, x.tobytes()).oid, "F32", shape))
        terms.append((refs[0], refs[1], 0.5 + i))
    return base, InputRef(store.put("F32", base.shape, base.tobytes()).oid, "F32", base.shape), terms




def _splitmix_keep(seed, j, density):
    """The module docstring's rule, in Python integers (the reference)."""
    z = (seed + (j + 1) * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    z ^= z >> 31
    return (z >> 11) < int(density * 2 ** 53)


def test_the_mask_is_splitmix64_of_the_index_and_keeps_about_the_density():
    seed = dare_seed(7, "model.layers.0.self_attn.q_proj.weight", 1)
    assert seed == dare_seed(7, "model.layers.0.self_attn.q_proj.weight", 1)
    assert seed != dare_seed(7, "model.layers.0.self_attn.q_proj.weight", 0)
    assert 0 <= seed < 2 ** 64
    keep = dare_keep(seed, 1000, 64, 0.3)
    assert keep.tolist() == [_splitmix_keep(seed, j, 0.3) for j in range(1000, 1064)]
    # any window of the flat index gives the same draws: chunks compute their own rows
    assert np.array_equal(dare_keep(seed, 1000, 64, 0.3), dare_keep(seed, 990, 100, 0.3)[10:74])
    share = dare_keep(seed, 0, 100_000, 0.3).mean()
    assert 0.29 < share < 0.31
    assert dare_keep(seed, 0, 1000, 1.0).all() and not dare_keep(seed, 0, 1000, 0.0).any()


def _reference(base, deltas, weights, densities, seeds, lam, consensus, rescale):
    """DARE as modelgit.merge's dare_linear / dare_ties define it, whole tensors in float64."""
    kept = []
    for d, w, p, s in zip(deltas, weights, densities, seeds):
        mask = np.array([_splitmix_keep(s, j, p) for j in range(d.size)]).reshape(d.shape)
        x = np.where(mask, d, 0.0)
        kept.append((x / p if rescale else x) * w)
    if consensus == "none":
        merged = sum(kept)
    else:
        positive = sum(kept) >= 0
        agree = [np.where(positive, x > 0, x < 0) for x in kept]
        merged = sum(np.where(a, x, 0.0) for a, x in zip(agree, kept))
    return base.astype(np.float64) + lam * merged


@pytest.mark.parametrize("consensus", ["none", "sum"])
def test_dare_lora_matches_a_reference_and_is_chunk_local(store, consensus):
    base, _base_ref, terms = _lora(store, rows=30, cols=16, rank=4, n=3, seed=4)
    weights, densities = [1.0, 0.5, 2.0], [0.5, 0.3, 0.9]
    seeds = [dare_seed(11, "w", i) for i in range(3)]
    arrays = [(np.frombuffer(store.get(a.oid), np.float32).reshape(a.shape),
               np.frombuffer(store.get(b.oid), np.float32).reshape(b.shape)) for a, b, _c in terms]
    deltas = [lora_product(a, b, c) for (a, b), (_A, _B, c) in zip(arrays, terms)]
    full = [(a, b, c, w, p, s) for (a, b, c), w, p, s in zip(terms, weights, densities, seeds)]
    expected = _reference(base, deltas, weights, densities, seeds, 0.7, consensus, True).astype(np.float32)
    for r0, r1 in ((0, 18), (18, 30)):  # two chunks of rows, each from its own rows
        chunk = base[r0:r1]
        ref = InputRef(store.put("F32", chunk.shape, chunk.tobytes()).oid, "F32", chunk.shape)
        recipe = dare_lora_recipe(ref, (r0, r1), full, 0.7, consensus, False, True)
        put = store.put_derived(recipe, "F32", chunk.shape)
        assert store.header(put.oid).encoding is DERIVED
        store.drop_derived_cache()
        raw = store.get(put.oid)
        assert object_id("F32", chunk.shape, raw) == put.oid
        np.testing.assert_array_equal(np.frombuffer(raw, np.float32).reshape(chunk.shape),
                                      expected[r0:r1])


def _dare_object(store):
    base, base_ref, terms = _lora(store, rows=12, cols=10, rank=4, n=2, seed=1)
    full = [(a, b, c, 1.0, 0.5, dare_seed(0, "w", i)) for i, (a, b, c) in enumerate(terms)]
    recipe = dare_lora_recipe(base_ref, (0, 12), full, 1.0, "none", False, True)
    oid = store.put_derived(recipe, "F32", (12, 10)).oid
    store.drop_derived_cache()
    return oid


def test_a_tampered_seed_fails_verification_and_is_quarantined(store):
    oid = _dare_object(store)
    rewrite_derived_recipe(store, oid, lambda body: body["params"]["terms"][0].update(
        s=body["params"]["terms"][0]["s"] ^ 1))
    with pytest.raises(CorruptObjectError, match=r"computing its recipe \(dare_lora/1\) from its "
                                                 "inputs does not reproduce its id") as info:
        store.get(oid)
    assert info.value.quarantined and not store.has(oid)


@pytest.mark.parametrize("change", [
    lambda p: p["terms"][0].update(s=-1),
    lambda p: p["terms"][0].update(s=2 ** 64),
    lambda p: p["terms"][0].update(s=True),
    lambda p: p["terms"][0].update(d=(1.5).hex()),
    lambda p: p.update(consensus="count"),
    lambda p: p.update(normalize=True),  # no consensus: the divisor is in lambda
    lambda p: p.pop("rescale"),
])
def test_a_malformed_dare_recipe_is_corrupt(store, change):
    oid = _dare_object(store)
    rewrite_derived_recipe(store, oid, lambda body: change(body["params"]))
    with pytest.raises(CorruptObjectError, match="bad recipe"):
        store.get(oid)
