"""Tiny routing fixtures: a tiny Llama base over two distinguishable synthetic domains, a LoRA
adapter trained on each, and a tiny BERT classifier with two classification adapters."""

from __future__ import annotations

import json

import pytest

from model_fixtures import *  # noqa: F401,F403  (one_thread, tiny models)

from route_texts import ANIMALS, CODE, SENTIMENT, SHOP, TOPIC  # noqa: E402


def _train(base, data, out, **kwargs):
    from modelgit.adapters import TrainConfig, train

    train(TrainConfig(base=str(base), data=str(data), output=str(out), rank=4, seed=1, threads=1,
                      **kwargs), progress=False)
    return str(out)


@pytest.fixture(scope="session")
def domains(tmp_path_factory):
    """{"base": dir, "animals": adapter dir, "code": adapter dir, "texts": {...}, "files": {...}}."""
    from modelgit.adapters.tiny import tiny_causal_lm

    root = tmp_path_factory.mktemp("route")
    base = tiny_causal_lm(root / "base", ANIMALS + CODE + SHOP, seed=0, hidden=32, layers=2)
    out = {"base": base, "texts": {"animals": ANIMALS, "code": CODE, "shop": SHOP}, "files": {}}
    for name, texts in (("animals", ANIMALS), ("code", CODE), ("shop", SHOP)):
        path = root / f"{name}.txt"
        path.write_text("\n".join(texts) + "\n", encoding="utf-8")
        out["files"][name] = str(path)
    for name in ("animals", "code"):
        out[name] = _train(base, out["files"][name], root / name, steps=40, lr=1e-2)
    return out


@pytest.fixture(scope="session")
def library(domains):
    from modelgit.route import Library

    return Library.from_dirs(domains["base"], {"animals": domains["animals"], "code": domains["code"]})


@pytest.fixture(scope="session")
def runtime(library):
    from modelgit.route._runtime import Runtime

    return Runtime(library)


@pytest.fixture(scope="session")
def classifiers(tmp_path_factory):
    """A tiny BERT base and two classification adapters: sentiment (pos/neg) and topic
    (animals/shop), both with labels 0/1."""
    from modelgit.adapters.tiny import tiny_classifier

    root = tmp_path_factory.mktemp("route-cls")
    words = [t for group in (*SENTIMENT, *TOPIC) for t in group]
    base = tiny_classifier(root / "base", words, seed=0)
    out = {"base": base}
    for name, (ones, zeros) in (("sentiment", SENTIMENT), ("topic", TOPIC)):
        path = root / f"{name}.jsonl"
        rows = [{"text": t, "label": 1} for t in ones] + [{"text": t, "label": 0} for t in zeros]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        out[f"{name}_data"] = str(path)
        out[name] = _train(base, path, root / name, steps=60, lr=2e-2, batch_size=8)
    return out
