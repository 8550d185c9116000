"""Pushing and fetching derived objects (modelgit.store.derived): the recipe and the inputs the
other side lacks travel, never the computed bytes; each side verifies by computing."""

import uuid

import numpy as np
import pytest

from modelgit.errors import CorruptObjectError, DerivedFunctionError, ObjectMissingError
from modelgit.git.transfer import fetch_objects, push_objects
from modelgit.store import Store
from modelgit.store._functions import lora_merge_recipe
from modelgit.store.derived import DERIVED, DERIVED_FORMAT, InputRef

from helpers import rewrite_derived_recipe

ROWS, COLS, RANK = 512, 256, 8  # a 512 KiB fp32 weight, rank-8 factors of 24 KiB


def _release(store, adapters=2, seed=0):
    """(base id, merged id, factor ids): a base weight and its merge with ``adapters`` LoRAs."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    base_ref = InputRef(store.put("F32", base.shape, base.tobytes()).oid, "F32", base.shape)
    terms, factors = [], []
    for i in range(adapters):
        a = rng.standard_normal((RANK, COLS)).astype(np.float32)
        b = rng.standard_normal((ROWS, RANK)).astype(np.float32)
        refs = [InputRef(store.put("F32", x.shape, x.tobytes()).oid, "F32", x.shape) for x in (a, b)]
        factors += [r.oid for r in refs]
        terms.append((refs[0], refs[1], 0.25 * (i + 1)))
    merged = store.put_derived(lora_merge_recipe(base_ref, (0, ROWS), terms), "F32", (ROWS, COLS))
    return base_ref.oid, merged.oid, factors


def test_push_moves_the_recipe_and_the_missing_inputs_only(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    remote = Store.open(str(tmp_path / "remote"), create=True)
    base, merged, factors = _release(local)
    push_objects(local, remote, {base})  # the remote has the base already (the release before)
    result = push_objects(local, remote, {merged})
    assert result.objects == 1 + len(factors)  # the recipe and the four factors
    assert result.bytes < 8 * 1024 + 4 * RANK * (ROWS + COLS) * 4 // 2  # no 512 KiB weight
    assert remote.header(merged).encoding is DERIVED
    assert remote.config["format"] == DERIVED_FORMAT
    assert Store.open(remote.url).get(merged) == local.get(merged)


def test_clone_fetches_the_recipe_and_its_inputs_and_computes_it(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    remote = Store.open(str(tmp_path / "remote"), create=True)
    base, merged, factors = _release(local)
    push_objects(local, remote, {merged})
    clone = Store.open(str(tmp_path / "clone"), create=True)
    result = fetch_objects(clone, [("origin", remote)], {merged})
    assert result.objects == 2 + len(factors)  # recipe, base, factors: no computed bytes
    assert result.bytes < ROWS * COLS * 4 * 1.1 + 64 * 1024
    assert clone.header(merged).encoding is DERIVED and clone.holds_derived
    assert clone.get(merged) == local.get(merged)
    again = fetch_objects(clone, [("origin", remote)], {merged})
    assert again.objects == 0


def test_a_fetch_completes_the_inputs_of_a_derived_object_already_here(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    remote = Store.open(str(tmp_path / "remote"), create=True)
    base, merged, factors = _release(local)
    push_objects(local, remote, {merged})
    clone = Store.open(str(tmp_path / "clone"), create=True)
    fetch_objects(clone, [("origin", remote)], {merged})
    clone.backend.delete(Store._key(factors[0]))  # as after a kill -9 between two writes
    clone.drop_derived_cache()
    with pytest.raises(ObjectMissingError, match="an input of derived object"):
        clone.get(merged)
    result = fetch_objects(clone, [("origin", remote)], {merged})
    assert result.objects == 1 and clone.get(merged) == local.get(merged)




def test_a_tampered_recipe_on_the_remote_is_not_fetched(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    remote = Store.open(str(tmp_path / "remote"), create=True)
    base, merged, factors = _release(local)
    push_objects(local, remote, {merged})
    rewrite_derived_recipe(remote, merged, lambda body: body["params"]["terms"][0].update(c=(0.5).hex()))
    clone = Store.open(str(tmp_path / "clone"), create=True)
    with pytest.raises(Exception, match="does not reproduce its id"):
        fetch_objects(clone, [("origin", remote)], {merged})
    assert not clone.has(merged)


def test_an_unknown_function_on_the_remote_asks_for_an_upgrade(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    remote = Store.open(str(tmp_path / "remote"), create=True)
    base, merged, factors = _release(local)
    push_objects(local, remote, {merged})
    rewrite_derived_recipe(remote, merged, lambda body: body.update(fn="ties_lora/7"))
    clone = Store.open(str(tmp_path / "clone"), create=True)
    with pytest.raises(DerivedFunctionError, match="upgrade modelgit"):
        fetch_objects(clone, [("origin", remote)], {merged})
    assert not clone.has(merged)


def test_verifying_the_remote_computes_its_derived_copies(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    remote = Store.open(str(tmp_path / "remote"), create=True)
    base, merged, factors = _release(local)
    push_objects(local, remote, {merged})
    again = push_objects(local, remote, {merged}, verify_remote=True)
    assert again.objects == 0 and again.replaced == 0
    rewrite_derived_recipe(remote, merged, lambda body: body["params"]["terms"][1].update(c=(2.0).hex()))
    repaired = push_objects(local, remote, {merged}, verify_remote=True)
    assert repaired.replaced == 1
    assert Store.open(remote.url).get(merged) == local.get(merged)


def test_gc_of_the_remote_keeps_what_its_derived_objects_need(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    remote = Store.open(str(tmp_path / "remote"), create=True)
    base, merged, factors = _release(local)
    push_objects(local, remote, {merged})
    result = remote.gc({merged})
    assert result.removed == 0 and result.kept == 2 + len(factors)
    assert remote.get(merged) == local.get(merged)


def _counting_reads(store) -> list[int]:
    """Count the bytes read from ``store``'s backend (a remote: what a fetch downloads), and
    copy instead of hard-linking, as over a network."""
    backend, total = store.backend, [0]
    for name in ("read", "read_head", "read_from"):
        original = getattr(backend, name, None)
        if original is not None:
            def counted(*args, _original=original, **kwargs):
                data = _original(*args, **kwargs)
                total[0] += len(data)
                return data
            setattr(backend, name, counted)
    backend.path_of = None
    return total


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_a_fetch_downloads_each_object_once(tmp_path, kind):
    # the header read that locates an object is not read again: the move reads the rest only
    local = Store.open(str(tmp_path / "local"), create=True)
    url = str(tmp_path / "remote") if kind == "local" else f"memory://mg-{uuid.uuid4().hex}"
    remote = Store.open(url, create=True)
    base, merged, factors = _release(local, adapters=3)
    push_objects(local, remote, {merged})
    clone = Store.open(str(tmp_path / "clone"), create=True)
    wire = _counting_reads(remote)
    result = fetch_objects(clone, [("origin", remote)], {merged})
    stored = sum(remote.stored_size(oid) for oid in [base, merged, *factors])
    assert result.objects == 2 + len(factors) and result.bytes == stored
    assert wire[0] == stored  # 24 KiB factors and a 512 KiB base: no 4 KiB read twice
    assert clone.get(merged) == local.get(merged)


def test_damage_after_the_header_of_a_remote_copy_is_still_caught(tmp_path):
    local = Store.open(str(tmp_path / "local"), create=True)
    remote = Store.open(str(tmp_path / "remote"), create=True)
    base, merged, factors = _release(local)
    push_objects(local, remote, {merged})
    key = Store._key(factors[1])
    blob = bytearray(remote.backend.read(key))
    blob[-3] ^= 0x10  # past the first 4 KiB: only the rest, read apart, holds the damage
    remote.backend.write_atomic(key, bytes(blob))
    clone = Store.open(str(tmp_path / "clone"), create=True)
    _counting_reads(remote)
    with pytest.raises(CorruptObjectError, match=factors[1]):
        fetch_objects(clone, [("origin", remote)], {merged})
    assert not clone.has(factors[1]) and not clone.has(merged)
