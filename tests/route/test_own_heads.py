"""Routing classifiers of different tasks: different label sets and head sizes (issue 17, the
request of issue 13's benchmark). Each adapter's head and classes are its own."""

from __future__ import annotations

import json

import pytest

from route_texts import SENTIMENT

from modelgit.route import BuildRequest, Decision, Library, RoutedModel, build_router, evaluate_routers

FOOD = ["apples milk bread", "cheese pears milk", "bread apples cheese", "pears bread milk"]
ANIMAL = ["cat dog bird cow", "dog fox horse", "bird cow cat", "horse fox dog"]
CITY = ["paris rome london", "rome tokyo paris", "london tokyo rome", "tokyo paris london"]


def _train(base, root, name, groups):
    from modelgit.adapters import TrainConfig, train

    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n"
                            for label, texts in groups.items() for t in texts), encoding="utf-8")
    # query/value only: the subject is how labels travel, not training; with the pooler adapted
    # too (train's classification default since it helped MiniLM) this tiny random BERT at
    # lr 2e-2 learns one of the two toy tasks to only 0.67 accuracy
    train(TrainConfig(base=str(base), data=str(path), output=str(root / name), rank=4, seed=1,
                      threads=1, steps=60, lr=2e-2, batch_size=8, task="classification",
                      target_modules=("query", "value")),
          progress=False)
    return str(root / name), str(path)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """A tiny BERT base, a 2-class sentiment adapter (neg, pos) and a 3-class topic adapter
    (animal, city, food)."""
    from modelgit.adapters.tiny import tiny_classifier

    root = tmp_path_factory.mktemp("own-heads")
    base = tiny_classifier(root / "base", [*SENTIMENT[0], *SENTIMENT[1], *FOOD, *ANIMAL, *CITY], seed=0)
    sentiment = _train(base, root, "sentiment", {"pos": SENTIMENT[0], "neg": SENTIMENT[1]})
    topic = _train(base, root, "topic", {"food": FOOD, "animal": ANIMAL, "city": CITY})
    return {"base": base, "sentiment": sentiment, "topic": topic}


def _model(tasks):
    library = Library.from_dirs(tasks["base"], {"sentiment": tasks["sentiment"][0],
                                                "topic": tasks["topic"][0]})
    examples = {"sentiment": SENTIMENT[0] + SENTIMENT[1], "topic": FOOD + ANIMAL + CITY}
    router = build_router(library, BuildRequest("examples", examples=examples, embedder="base:0",
                                                threshold=None))
    return RoutedModel(router, library)


def test_each_input_is_classified_by_its_adapters_own_head_and_named_by_its_classes(tasks):
    """Failed before: "the classification adapters have heads of different sizes"."""
    model = _model(tasks)
    texts = SENTIMENT[0][:2] + SENTIMENT[1][:2] + FOOD[:2] + ANIMAL[:2] + CITY[:2]
    truth = ["pos"] * 2 + ["neg"] * 2 + ["food"] * 2 + ["animal"] * 2 + ["city"] * 2
    assert len(model.classify(texts)) == len(texts)  # routed by the router (not the subject here)
    oracle = [Decision(n, 1, {n: 1.0}) for n in ["sentiment"] * 4 + ["topic"] * 6]
    results = model.classify(texts, decisions=oracle)
    assert {r.label for r in results[:4]} <= {"neg", "pos"}
    assert {r.label for r in results[4:]} <= {"animal", "city", "food"}
    assert sum(r.label == t for r, t in zip(results, truth)) / len(truth) >= 0.8
    # the probabilities are over the adapter's own classes only
    assert all(0 < r.probability <= 1 for r in results)
    # one adapter's head on every input: its own classes, whatever the text
    forced = model.classify(texts, decisions=[Decision("sentiment", 1, {"sentiment": 1.0})] * len(texts))
    assert {r.label for r in forced} <= {"neg", "pos"}


def test_route_eval_maps_each_suites_labels_through_the_adapters(tasks):
    from modelgit.eval import SuiteConfig

    model = _model(tasks)
    suites = [SuiteConfig(name=name, data=tasks[name][1], task="classification", metric="accuracy")
              for name in ("sentiment", "topic")]
    report = evaluate_routers([model], suites, modes=("hard",), cost_samples=0)
    by_suite = {s["suite"]: s["values"] for s in report["suites"]}
    for name, other in (("sentiment", "topic"), ("topic", "sentiment")):
        values = by_suite[name]
        # an adapter of another task never names this suite's classes
        assert values[f"adapter {other}"] == 0.0
        assert values[f"adapter {name}"] >= 0.8
        assert values["oracle"] == values[f"adapter {name}"]
        assert 0 <= values["router examples hard"] <= 1
