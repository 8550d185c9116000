"""Router files are untrusted: hostile or mismatched ones are refused with the reason."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from modelgit.errors import FormatError, UsageError
from modelgit.route import BuildRequest, Library, RoutedModel, build_router, load, save
from modelgit.route.files import load_router

from route_texts import ANIMALS, CODE


@pytest.fixture(scope="module")
def saved(tmp_path_factory, library, runtime):
    """{"examples": dir, "knn": dir, "linear": dir, "arrow": dir} of routers over the library."""
    root = tmp_path_factory.mktemp("routers")
    out = {}
    for label, request in (("examples", BuildRequest("examples", examples={"animals": ANIMALS,
                                                                           "code": CODE})),
                           ("knn", BuildRequest("examples", method="knn", examples={
                               "animals": ANIMALS, "code": CODE})),
                           ("linear", BuildRequest("examples", method="linear", examples={
                               "animals": ANIMALS, "code": CODE})),
                           ("arrow", BuildRequest("arrow"))):
        out[label] = save(build_router(library, request, runtime), str(root / label), library)
    return out


def _copy(tmp_path, source, name="copy"):
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def _edit_json(directory, change):
    path = directory / "router.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _rewrite_tensors(directory, change):
    from safetensors.torch import load_file, save_file

    path = str(directory / "router.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(kind="moe"), "unknown router kind 'moe'"),
    (lambda d: d.update(format_version=99), "upgrade modelgit"),
    (lambda d: d.update(format="other"), "not a router file"),
    (lambda d: d.update(mode="fuzzy"), "unknown mode"),
    (lambda d: d.update(top_k=0), "top_k"),
    (lambda d: d.update(temperature=-1), "temperature"),
    (lambda d: d.update(threshold="high"), "threshold"),
    (lambda d: d.update(embedder="python:import os"), "unknown embedder"),
    (lambda d: d["adapters"].append({"name": "../evil", "adapter_id": None}), "adapter name"),
    (lambda d: d["classes"][0].update(target="elsewhere"), "neither an adapter"),
    (lambda d: d.update(base_fingerprint="not hex"), "base_fingerprint"),
], ids=["kind", "version", "format", "mode", "top_k", "temperature", "threshold", "embedder",
        "name", "class", "fingerprint"])
def test_bad_router_json_is_refused(tmp_path, saved, change, message):
    directory = _copy(tmp_path, saved["examples"])
    _edit_json(directory, change)
    with pytest.raises(FormatError, match=message):
        load_router(str(directory))


def test_strict_json_limits(tmp_path, saved):
    directory = _copy(tmp_path, saved["examples"])
    path = directory / "router.json"
    path.write_text('{"format": "modelgit-router", "format": "x"}')
    with pytest.raises(FormatError, match="duplicate key"):
        load_router(str(directory))
    path.write_text("[" * 100 + "]" * 100)
    with pytest.raises(FormatError, match="nested"):
        load_router(str(directory))
    path.write_text(json.dumps({"format": "modelgit-router", "pad": "x" * (1024 * 1024)}))
    with pytest.raises(FormatError, match="over the limit"):
        load_router(str(directory))
    path.write_text('{"threshold": NaN}')
    with pytest.raises(FormatError, match="NaN"):
        load_router(str(directory))


@pytest.mark.parametrize("router, change, message", [
    ("examples", lambda t: t["centroids"].fill_(float("nan")), "NaN or infinite"),
    ("examples", lambda t: t.update(centroids=t["centroids"][:1]), "centroids must be"),
    ("examples", lambda t: t.update(center=t["center"].double()), "F64, not F32"),
    ("examples", lambda t: t.pop("center"), "center must be"),
    ("knn", lambda t: t["example_class"].fill_(7), "class indices"),
    ("knn", lambda t: t.update(examples=t["examples"][:, :3]), "examples must be"),
    ("linear", lambda t: t.update(weight=t["weight"][:1]), "weight must be"),
    ("linear", lambda t: t["scale"].fill_(0.0), "scale must be positive"),
    ("linear", lambda t: t.pop("bias"), "bias must be"),
    ("linear", lambda t: t["weight"].fill_(float("inf")), "NaN or infinite"),
    ("arrow", lambda t: t.update({"sigma.0": -t["sigma.0"]}), "negative singular"),
    ("arrow", lambda t: t.update({"directions.0": t["directions.0"][:1]}), "directions must be"),
    ("arrow", lambda t: t["directions.0"].fill_(float("inf")), "NaN or infinite"),
], ids=["nan", "shape", "dtype", "missing", "class-index", "knn-shape", "linear-weight",
        "linear-scale", "linear-bias", "linear-inf", "sigma", "arrow-shape", "inf"])
def test_bad_tensors_are_refused(tmp_path, saved, router, change, message):
    directory = _copy(tmp_path, saved[router])
    _rewrite_tensors(directory, change)
    with pytest.raises(FormatError, match=message):
        load_router(str(directory))


def test_a_pickle_in_place_of_the_tensors_is_refused_unread(tmp_path, saved):
    import pickle

    directory = _copy(tmp_path, saved["examples"])
    (directory / "router.safetensors").write_bytes(pickle.dumps({"os": os.system}))
    with pytest.raises(FormatError):
        load_router(str(directory))
    (directory / "router.safetensors").unlink()
    with pytest.raises(FormatError, match="missing"):
        load_router(str(directory))
    with pytest.raises(FormatError, match="not a router directory"):
        load_router(str(tmp_path))


def test_a_router_naming_an_adapter_the_library_lacks_is_refused(domains, saved):
    small = Library.from_dirs(domains["base"], {"animals": domains["animals"]})
    with pytest.raises(UsageError, match="names adapter\\(s\\) code that the library lacks"):
        load(saved["examples"], library=small)
    renamed = Library.from_dirs(domains["base"], {"animals": domains["animals"],
                                                  "kode": domains["code"]})
    with pytest.raises(UsageError, match="lacks"):
        load(saved["arrow"], library=renamed)


def test_a_router_built_for_another_base_is_refused(tmp_path, domains, saved):
    from modelgit.adapters.tiny import tiny_causal_lm

    other_base = tiny_causal_lm(tmp_path / "other", ANIMALS + CODE, seed=5, hidden=32, layers=2)
    other = Library.from_dirs(other_base, {"animals": domains["animals"], "code": domains["code"]},
                              allow_mismatch=True)
    with pytest.raises(UsageError, match="built for another base"):
        load(saved["examples"], library=other)


def test_a_router_built_for_other_adapter_versions_is_refused(tmp_path, domains, saved):
    directory = _copy(tmp_path, saved["examples"])
    _edit_json(directory, lambda d: d["adapters"][0].update(adapter_id="ff" * 32))
    library = Library.from_dirs(domains["base"], {"animals": domains["animals"],
                                                  "code": domains["code"]})
    with pytest.raises(UsageError, match="other versions of adapter\\(s\\) animals"):
        load(str(directory), library=library)


def test_tensors_of_another_size_than_the_base_gives_are_refused(tmp_path, library, runtime, saved):
    directory = _copy(tmp_path, saved["examples"])

    def grow(tensors):
        import torch

        tensors["center"] = torch.zeros(7)
        tensors["centroids"] = torch.zeros((2, 7))
    _rewrite_tensors(directory, grow)
    router = load_router(str(directory))  # consistent in itself
    with pytest.raises(UsageError, match="size 7"):
        RoutedModel(router, library, runtime=runtime)


def test_a_linear_router_routes_the_same_after_saving(tmp_path, library, runtime, saved):
    from modelgit.route.files import check_against

    router = load_router(saved["linear"])
    check_against(router, library)
    assert router.spec.settings["method"] == "linear"
    fresh = build_router(library, BuildRequest("examples", method="linear", examples={
        "animals": ANIMALS, "code": CODE}), runtime)
    loaded = RoutedModel(router, library, runtime=runtime).route(ANIMALS + CODE)
    built = RoutedModel(fresh, library, runtime=runtime).route(ANIMALS + CODE)
    assert [d.adapter for d in loaded] == [d.adapter for d in built]
    assert [d.confidence for d in loaded] == pytest.approx([d.confidence for d in built], abs=1e-5)
    directory = _copy(tmp_path, saved["linear"])
    _edit_json(directory, lambda d: d["settings"].update(l2=-1))
    with pytest.raises(FormatError, match="settings.l2"):
        load_router(str(directory))
