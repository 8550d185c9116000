"""Each router kind routes distinguishable synthetic domains; decisions, thresholds, SVD."""

from __future__ import annotations

import pytest

from modelgit.errors import UsageError
from modelgit.route import BuildRequest, RoutedModel, build_router
from modelgit.route.router import Router, decide

from route_texts import ANIMALS, CODE, SHOP


def _routed(library, runtime, request):
    return RoutedModel(build_router(library, request, runtime), library, runtime=runtime)


def _examples(**extra):
    return BuildRequest("examples", examples={"animals": ANIMALS, "code": CODE}, **extra)


@pytest.mark.parametrize("request_", [
    BuildRequest("arrow", layers=2),  # the tiny base has 2 layers: read both
    _examples(),
    _examples(method="knn", k=2),
    _examples(method="linear"),
    _examples(embedder="base:0"),
    _examples(embedder="minilm"),
], ids=["arrow", "centroid", "knn", "linear", "embeddings-layer", "minilm"])
def test_each_kind_routes_each_domain_to_its_adapter(library, runtime, request_):
    model = _routed(library, runtime, request_)
    decisions = model.route(ANIMALS + CODE)
    assert [d.adapter for d in decisions] == ["animals"] * len(ANIMALS) + ["code"] * len(CODE)
    assert all(d.weights == {d.adapter: 1.0} for d in decisions)


def test_arrow_needs_no_text_and_reads_the_first_layers(library, runtime):
    router = build_router(library, BuildRequest("arrow", layers=1), runtime)
    assert router.spec.settings["layers"] == 1
    assert all(".layers.0." in m for m in router.spec.settings["modules"])
    assert router.spec.threshold is None  # nothing to calibrate with
    calibrated = build_router(library, BuildRequest("arrow", examples={"animals": ANIMALS,
                                                                       "code": CODE}), runtime)
    assert calibrated.spec.threshold is not None


def test_arrow_texts_remove_each_adapters_bias(library, runtime, tmp_path):
    """Texts given to arrow set a per-adapter offset: over those texts every adapter's mean
    relative score is zero (no adapter wins every input because of the states' anisotropy),
    and the offset survives saving; a wrong-sized offset in a file is refused."""
    import torch

    from modelgit.errors import FormatError
    from modelgit.route.arrow import raw_scores
    from modelgit.route.files import load_router, save_router

    texts = {"animals": ANIMALS, "code": CODE}
    router = build_router(library, BuildRequest("arrow", layers=1, examples=texts), runtime)
    assert router.tensors["offset"].shape == (2,)
    assert router.spec.settings["offset_texts"] == len(ANIMALS) + len(CODE)
    relative, _ = raw_scores(router, runtime, ANIMALS + CODE)
    assert torch.allclose(relative.mean(0), torch.zeros(2), atol=1e-5)
    plain = build_router(library, BuildRequest("arrow", layers=1), runtime)
    assert "offset" not in plain.tensors
    assert not torch.allclose(raw_scores(plain, runtime, ANIMALS + CODE)[0].mean(0),
                              torch.zeros(2), atol=1e-5)
    model = _routed(library, runtime, BuildRequest("arrow", layers=2, examples=texts,
                                                   threshold=None))
    assert [d.adapter for d in model.route(ANIMALS + CODE)] == \
        ["animals"] * len(ANIMALS) + ["code"] * len(CODE)
    saved = save_router(router, str(tmp_path / "r"))
    assert torch.equal(load_router(saved).tensors["offset"], router.tensors["offset"])
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "r" / "router.safetensors"))
    tensors["offset"] = torch.zeros(3)
    save_file(tensors, str(tmp_path / "r" / "router.safetensors"))
    with pytest.raises(FormatError, match="offset must be a vector of one value per adapter"):
        load_router(saved)


def test_reviews_router_sends_each_suite_to_its_best_adapter_or_the_base(library, runtime):
    scores = {"animals": {"zoo": {"base": 10, "adapter": 6}, "py": {"base": 10, "adapter": 11},
                          "shop": {"base": 10, "adapter": 10.5}},
              "code": {"zoo": {"base": 10, "adapter": 12}, "py": {"base": 10, "adapter": 5},
                       "shop": {"base": 10, "adapter": 10.2}}}
    request = BuildRequest("reviews", suites={"zoo": ANIMALS, "py": CODE, "shop": SHOP},
                           suite_scores=scores, threshold=None, embedder="base:0")
    model = _routed(library, runtime, request)
    assert model.spec.classes == (("zoo", "animals"), ("py", "code"), ("shop", "base"))
    decisions = model.route(ANIMALS[:3] + CODE[:3] + SHOP)
    assert [d.adapter for d in decisions] == ["animals"] * 3 + ["code"] * 3 + ["base"] * 3
    assert all(d.weights == {} for d in decisions[6:])


def test_reviews_scores_for_an_unknown_adapter_are_refused(library, runtime):
    request = BuildRequest("reviews", suites={"zoo": ANIMALS},
                           suite_scores={"animal": {"zoo": {"base": 1, "adapter": 0.5}}})
    with pytest.raises(UsageError, match="did you mean 'animals'"):
        build_router(library, request, runtime)


def test_examples_for_an_unknown_or_missing_adapter_are_refused(library, runtime):
    with pytest.raises(UsageError, match="did you mean 'code'"):
        build_router(library, BuildRequest("examples", examples={"animals": ANIMALS, "cod": CODE}),
                     runtime)
    with pytest.raises(UsageError, match="no examples for adapter"):
        build_router(library, BuildRequest("examples", examples={"animals": ANIMALS}), runtime)
    with pytest.raises(UsageError, match="unknown router kind 'arow'.*'arrow'"):
        build_router(library, BuildRequest("arow"), runtime)


def test_the_threshold_sends_unsure_inputs_to_the_base(library, runtime):
    model = _routed(library, runtime, _examples())
    assert model.spec.threshold is not None  # calibrated on the examples
    always_base = model.with_settings(threshold=2.0)  # no cosine reaches 2
    assert {d.adapter for d in always_base.route(ANIMALS + CODE)} == {"base"}
    never_base = model.with_settings(threshold=None)
    assert "base" not in {d.adapter for d in never_base.route(SHOP)}


def test_base_examples_give_the_base_a_class(library, runtime):
    request = BuildRequest("examples", examples={"animals": ANIMALS, "code": CODE, "base": SHOP})
    decisions = _routed(library, runtime, request).route(SHOP)
    assert [d.adapter for d in decisions] == ["base"] * len(SHOP)


def test_soft_decisions_mix_the_top_k_with_weights_summing_to_one(library, runtime):
    model = _routed(library, runtime, _examples(mode="soft", top_k=2, temperature=1.0,
                                                threshold=None))
    for decision in model.route(ANIMALS + CODE):
        assert set(decision.weights) == {"animals", "code"}
        assert sum(decision.weights.values()) == pytest.approx(1.0)
        assert decision.adapter == max(decision.weights, key=decision.weights.get)


def test_decide_pins_hard_soft_and_threshold():
    import torch

    from modelgit.route.router import RouterSpec

    spec = RouterSpec("examples", "soft", 2, 0.1, 0.5, "base:1", "ab" * 32,
                      (("a", None), ("b", None), ("c", None)))
    scores = torch.tensor([[0.9, 0.4, 0.0, float("-inf")], [0.05, 0.02, 0.01, float("-inf")]])
    first, second = decide(scores, spec)
    w = torch.softmax(torch.tensor([0.9, 0.4]) / 0.5, 0)
    assert first.adapter == "a" and first.weights == pytest.approx({"a": float(w[0]), "b": float(w[1])})
    assert second.adapter == "base" and second.weights == {}  # 0.05 < threshold 0.1
    hard = decide(scores, spec.with_overrides(mode="hard", threshold=None))
    assert [d.adapter for d in hard] == ["a", "a"] and hard[0].weights == {"a": 1.0}


def test_top_directions_are_the_exact_svd_of_the_update():
    import torch

    from modelgit.route.arrow import top_directions

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 12, generator=generator), torch.randn(9, 4, generator=generator)
    directions, sigma = top_directions(a, b, 2.5, 3)
    _, s, vh = torch.linalg.svd(2.5 * (b.double() @ a.double()))
    assert torch.allclose(sigma.double(), s[:3], rtol=1e-5)
    for found, expected in zip(directions.double(), vh[:3]):  # up to sign
        assert abs(float(found @ expected)) == pytest.approx(1.0, abs=1e-5)
    assert top_directions(a, b, 1.0, 10)[0].shape == (4, 12)  # at most the rank


def test_router_of_kind_examples_needs_enough_texts(library, runtime):
    with pytest.raises(UsageError, match="fewer than 2"):
        build_router(library, BuildRequest("examples", examples={"animals": ANIMALS[:1],
                                                                 "code": CODE}), runtime)
    with pytest.raises(UsageError, match="unknown embedder"):
        build_router(library, _examples(embedder="bert"), runtime)
    assert isinstance(build_router(library, _examples(), runtime), Router)


def test_linear_probe_scores_are_log_probabilities_and_soft_weights_its_probabilities(library,
                                                                                       runtime):
    """The linear method's target scores are the probe's log-probabilities (they sum to one over
    the targets), its soft weights at the default temperature are those probabilities; `auto`
    sets no threshold (low probability: between adapters, not outside them), and the router
    records the probe's cross-validated accuracy on the examples."""
    import math

    model = _routed(library, runtime, _examples(method="linear", mode="soft"))
    assert model.spec.temperature == 1.0 and model.spec.settings["l2"] == 1.0
    assert model.spec.threshold is None
    held_out = model.spec.settings["cross_validation"]
    assert held_out["folds"] == 5 and 0.75 <= held_out["accuracy"] <= 1.0  # 12 examples
    for decision in model.route(ANIMALS + CODE + SHOP):
        probabilities = {t: math.exp(v) for t, v in decision.scores.items()}
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert decision.weights == pytest.approx(probabilities, abs=1e-5)


def test_linear_probe_refuses_a_bad_l2(library, runtime):
    with pytest.raises(UsageError, match="L2 strength must be a positive"):
        build_router(library, _examples(method="linear", l2=0.0), runtime)


def test_linear_probe_sends_inputs_like_its_base_examples_to_the_base(library, runtime):
    request = BuildRequest("examples", method="linear",
                           examples={"animals": ANIMALS, "code": CODE, "base": SHOP})
    model = _routed(library, runtime, request)
    assert [d.adapter for d in model.route(SHOP + ANIMALS)] == ["base"] * len(SHOP) + ["animals"] * len(ANIMALS)
    never = model.with_settings(threshold=0.5)  # above every log-probability: all to the base
    assert {d.adapter for d in never.route(CODE)} == {"base"}
