"""A release merging LoRAs with linear, task arithmetic, TIES or DARE stores recipes, not deltas
(modelgit.workflow.derived_release), and a clone of it moves the adapters and the recipes."""

from __future__ import annotations

import os

import pytest

from workflow_helpers import model_dir, train_adapter

from modelgit.formats.safetensors_format import open_safetensors
from modelgit.git import setup
from modelgit.manifest import Manifest
from modelgit.store.derived import DERIVED
from modelgit.workflow import contribute, release, review


@pytest.fixture
def accepted(hub, contributor, domain_data, suites, tmp_path):
    repo, _ = hub
    for domain in ("animals", "cooking"):
        clone = contributor(domain)
        adapter = train_adapter(model_dir(clone), domain_data[domain]["train"],
                                str(tmp_path / f"{domain}-adapter"))
        contribute(clone, adapter, f"{domain}-lora", f"LoRA on {domain}", domain=domain)
    review(repo, suites)
    return repo


def _weights_manifest(repo, rev):
    text = repo.git("show", f"{rev}:model/model.safetensors")
    return Manifest.loads(text, "weights")


def _tensors(path):
    reader = open_safetensors(path)
    try:
        return {e.name: bytes(reader.data(e.name)) for e in reader.entries()}
    finally:
        reader.close()


@pytest.mark.parametrize("method", ["task_arithmetic", "linear", "ties", "dare_ties"])
def test_a_release_stores_its_merged_tensors_as_recipes(accepted, suites, tmp_path, method):
    repo = accepted
    store = repo.store()
    before = {oid for oid in store.iter_objects()}
    done = release(repo, suites, method=method, parameters={"weight": 0.5} if method == "linear"
                   else {"lambda": 0.75}, push="origin")
    old = _weights_manifest(repo, "HEAD~1")
    new = _weights_manifest(repo, done.commit)
    old_chunks = {t.name: t.chunks for f in old.files for t in f.tensors}
    changed = [t for f in new.files for t in f.tensors if old_chunks.get(t.name) != t.chunks]
    assert changed  # the merge changed the targeted weights
    targeted = [t for t in changed if t.name.endswith(("q_proj.weight", "v_proj.weight"))]
    assert targeted
    for tensor in changed:
        for oid in tensor.chunks:
            assert store.header(oid).encoding is DERIVED, tensor.name
    added = set(store.iter_objects()) - before
    inputs = {i for o in added for i in store.derived_inputs(o)}
    weights = [o for o in added if store.header(o).dtype != "U8"]  # not manifests, cards, records
    assert weights and all(store.header(o).encoding is DERIVED or o in inputs for o in weights)
    assert not any(store.header(o).encoding.name == "delta" for o in added)
    # the checkout is byte-exact: the work tree's file is what a clone computes
    store.drop_derived_cache()
    clone = setup.clone(repo.git("config", "remote.origin.url").decode().strip(),
                        str(tmp_path / "consumer"))
    assert _tensors(os.path.join(model_dir(clone), "model.safetensors")) == \
        _tensors(os.path.join(model_dir(repo), "model.safetensors"))
    remote = clone.store()
    assert all(remote.header(o).encoding is DERIVED for t in changed for o in t.chunks)


def test_della_keeps_the_delta_path(accepted, suites):
    repo = accepted
    done = release(repo, suites, method="della")
    store = repo.store()
    new = _weights_manifest(repo, done.commit)
    assert not any(store.header(o).encoding is DERIVED for f in new.files for t in f.tensors
                   for o in t.chunks)


def test_dare_recipes_become_dare_forms_and_unknown_options_fall_back():
    from modelgit.workflow.derived_release import DareForm, merge_terms

    models = [{"model": "base+a1", "parameters": {"weight": 1.0, "density": 0.5}},
              {"model": "base+a2", "parameters": {"weight": 3.0, "density": 1.5}}]
    form = merge_terms({"merge_method": "dare_linear", "models": models,
                        "parameters": {"normalize": True, "lambda": 2.0, "seed": 9}}, "/r")
    assert isinstance(form, DareForm) and form.consensus == "none" and form.seed == 9
    assert not form.normalize and form.lam == 0.5  # lambda / sum of weights, as the engine divides
    assert [m[2] for m in form.models] == [0.5, 1.0] and form.rescale
    ties = merge_terms({"merge_method": "dare_ties", "models": models, "seed": 4}, "/r")
    assert ties.consensus == "sum" and ties.seed == 4 and ties.lam == 1.0
    for parameters in ({"seed": True}, {"seed": 1.5}, {"rescale": "yes"}, {"epsilon": 0.1}):
        assert merge_terms({"merge_method": "dare_linear", "models": models,
                            "parameters": parameters}, "/r") is None
