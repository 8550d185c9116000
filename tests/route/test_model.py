"""RoutedModel: soft and hard routing against PEFT's own runs, scoring, generation,
classification, truncation of over-long inputs, router files round trip."""

from __future__ import annotations

import warnings

import pytest

from modelgit.errors import UsageError
from modelgit.route import BuildRequest, Decision, Library, RoutedModel, build_router, load, save
from modelgit.route.mixing import SoftMixer

from route_texts import ANIMALS, CODE, SENTIMENT, TOPIC


@pytest.fixture(scope="module")
def routed(library, runtime):
    router = build_router(library, BuildRequest("examples", examples={"animals": ANIMALS,
                                                                      "code": CODE}), runtime)
    return RoutedModel(router, library, runtime=runtime)


def _peft_logits(base, adapter, batch):
    import torch

    from modelgit.adapters import load_model

    model = load_model(base, "causal_lm", adapter_dir=adapter)
    with torch.no_grad():
        return model(**batch).logits


def test_soft_mixing_with_one_hot_weights_equals_peft_single_adapter(domains, runtime):
    import torch

    batch = runtime.encode(ANIMALS[:2] + CODE[:2]).batch
    for index, name in enumerate(("animals", "code")):
        weights = torch.zeros((4, 2))
        weights[:, index] = 1.0
        with torch.no_grad(), SoftMixer(runtime, ("animals", "code")).mixing(weights):
            mixed = runtime.model(**batch).logits
        assert torch.equal(mixed, _peft_logits(domains["base"], domains[name], batch))


def test_soft_mixing_is_linear_in_the_weights(runtime):
    """Half of each update: the LoRA layers' outputs are the mean of the two single runs."""
    import torch

    layer = runtime.lora_layers()[0][1]
    x = torch.randn(3, 5, layer.in_features)
    outputs = {}
    for key, weights in (("a", [[1.0, 0.0]] * 3), ("b", [[0.0, 1.0]] * 3), ("mix", [[0.5, 0.5]] * 3)):
        with torch.no_grad(), SoftMixer(runtime, ("animals", "code")).mixing(weights):
            outputs[key] = layer(x)
    assert torch.allclose(outputs["mix"], (outputs["a"] + outputs["b"]) / 2, atol=1e-6)


def test_hard_routing_of_a_mixed_batch_equals_per_adapter_runs(domains, routed):
    texts = ANIMALS[:2] + CODE[:2]
    decisions = routed.route(texts)
    assert [d.adapter for d in decisions] == ["animals", "animals", "code", "code"]
    mixed = routed.score(texts, batch_size=4)
    alone = {name: routed.score(texts, batch_size=4,
                                decisions=[Decision(name, 1.0, {name: 1.0})] * 4)
             for name in ("animals", "code")}
    for row, decision in enumerate(decisions):
        assert mixed[row].nll == pytest.approx(alone[decision.adapter][row].nll, rel=1e-5)
        assert mixed[row].decision == decision


def test_scores_equal_modelgit_eval_perplexity(domains, routed):
    from modelgit.adapters import load_model, load_tokenizer
    from modelgit.eval import perplexity

    tokenizer = load_tokenizer(domains["base"])
    model = load_model(domains["base"], "causal_lm", adapter_dir=domains["code"])
    expected = perplexity(model, tokenizer, CODE)
    scored = routed.score(CODE, decisions=[Decision("code", 1.0, {"code": 1.0})] * len(CODE))
    tokens = sum(s.tokens for s in scored)
    assert tokens == expected["tokens"]
    assert sum(s.nll * s.tokens for s in scored) / tokens == pytest.approx(expected["loss"], rel=1e-5)
    base = routed.score(CODE, decisions=[Decision("base", 1.0, {})] * len(CODE))
    assert sum(s.nll * s.tokens for s in base) > sum(s.nll * s.tokens for s in scored)


def test_over_long_inputs_are_truncated_with_one_warning(routed):
    long_text = " ".join(ANIMALS * 60)  # far over the 512-token context of the tiny model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scored = routed.score([long_text, long_text, ANIMALS[0]])
        decisions = routed.route([long_text])
        generated = routed.generate([long_text], max_new_tokens=3)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2  # one per call that cut texts: score (two texts) and generate
    assert "2 input(s) longer than 512 tokens" in messages[0]
    assert "prompt(s)" in messages[1]
    assert scored[0].tokens == 511 and decisions[0].adapter == "animals"
    assert isinstance(generated[0], str)


def test_generate_follows_each_prompts_routing(routed):
    texts = ["the cat sat on the", "for i in range ("]
    routed_out = routed.generate(texts, max_new_tokens=4)
    alone = [routed.with_settings(mode="hard")._run(  # noqa: SLF001 - the same call per adapter
        routed.runtime.encode([t]).batch, [d], "generate", max_new_tokens=4, do_sample=False,
        pad_token_id=routed.runtime.tokenizer.pad_token_id) for t, d in zip(texts, routed.route(texts))]
    tokenizer = routed.runtime.tokenizer
    expected = [tokenizer.decode(row[0][len(routed.runtime.encode([t]).batch["input_ids"][0]):],
                                 skip_special_tokens=True) for t, row in zip(texts, alone)]
    assert routed_out == expected
    with pytest.raises(UsageError, match="max_new_tokens"):
        routed.generate(texts, max_new_tokens=0)
    with pytest.raises(UsageError, match="needs classification"):
        routed.classify(texts)


def test_soft_routing_scores_between_the_adapters(routed):
    soft = routed.with_settings(mode="soft", threshold=None)
    soft = RoutedModel(type(soft.router)(soft.spec.with_overrides(temperature=10.0),
                                         soft.router.tensors), soft.library, runtime=soft.runtime)
    text = [ANIMALS[0]]
    decision = soft.route(text)[0]
    assert 0.3 < decision.weights["animals"] < 0.7  # a high temperature mixes evenly
    ends = [soft.score(text, decisions=[Decision(n, 1, {n: 1.0})])[0].nll for n in ("animals", "code")]
    assert min(ends) - 1e-6 <= soft.score(text)[0].nll <= max(ends) + 0.5


def test_router_files_round_trip(tmp_path, library, routed):
    import torch

    save(routed.router, str(tmp_path / "r"), library)
    again = load(str(tmp_path / "r"))
    assert again.spec == routed.spec and again.spec.settings == routed.spec.settings
    assert routed.router.tensors.keys() == again.router.tensors.keys()
    assert all(torch.equal(routed.router.tensors[k], again.router.tensors[k])
               for k in routed.router.tensors)
    assert [d.adapter for d in again.route(ANIMALS + CODE)] == \
        [d.adapter for d in routed.route(ANIMALS + CODE)]
    with pytest.raises(UsageError, match="not empty|--force"):
        save(routed.router, str(tmp_path / "r"))
    save(routed.router, str(tmp_path / "r"), overwrite=True)
    soft = load(str(tmp_path / "r"), mode="soft", top_k=2)
    assert soft.spec.mode == "soft"


def test_routed_classification_uses_each_inputs_adapter(classifiers):
    library = Library.from_dirs(classifiers["base"], {"sentiment": classifiers["sentiment"],
                                                      "topic": classifiers["topic"]})
    examples = {"sentiment": SENTIMENT[0] + SENTIMENT[1], "topic": TOPIC[0] + TOPIC[1]}
    router = build_router(library, BuildRequest("examples", examples=examples, embedder="base:0",
                                                threshold=None))
    model = RoutedModel(router, library)
    texts = SENTIMENT[0] + SENTIMENT[1] + TOPIC[0] + TOPIC[1]
    truth = [1] * 4 + [0] * 4 + [1] * 3 + [0] * 3
    results = model.classify(texts)
    assert [r.decision.adapter for r in results] == ["sentiment"] * 8 + ["topic"] * 6
    routed_accuracy = sum(r.label_id == t for r, t in zip(results, truth)) / len(truth)
    wrong = [Decision(n, 1, {n: 1.0}) for n in ["topic"] * 8 + ["sentiment"] * 6]
    swapped = sum(r.label_id == t for r, t in zip(model.classify(texts, decisions=wrong), truth))
    assert routed_accuracy >= 0.9 and routed_accuracy > swapped / len(truth)
    with pytest.raises(UsageError, match="needs causal_lm"):
        model.score(texts)
