"""Serving fixtures: the tiny routing libraries of tests/route (a Llama base with `animals` and
`code` adapters; a BERT classifier with `sentiment` and `topic` adapters), servers on free ports
of localhost, and each adapter run alone in-process (the reference outputs)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

_spec = importlib.util.spec_from_file_location(
    "_route_fixtures", pathlib.Path(__file__).parent.parent / "route" / "conftest.py")
_route = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_route)
domains, classifiers, one_thread = _route.domains, _route.classifiers, _route.one_thread

pytest.importorskip("fastapi", reason="modelgit serve needs the serve extra: pip install -e '.[serve]'")


@pytest.fixture(scope="session")
def lm_library(domains):
    from modelgit.route import Library

    return Library.from_dirs(domains["base"], {"animals": domains["animals"], "code": domains["code"]})


@pytest.fixture(scope="session")
def cls_library(classifiers):
    from modelgit.route import Library

    return Library.from_dirs(classifiers["base"], {"sentiment": classifiers["sentiment"],
                                                   "topic": classifiers["topic"]})


@pytest.fixture
def serve():
    """``serve(source, **config)``: a running server (stopped after the test)."""
    from modelgit.serve import BackgroundServer, ServeConfig, create_app

    started = []

    def start(source, rev=None, **settings):
        server = BackgroundServer(create_app(source, rev, ServeConfig(**settings)))
        started.append(server.__enter__())
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


@pytest.fixture(scope="session")
def alone(domains):
    """``alone(adapter or None, prompt, max_tokens)``: greedy text of that adapter (or the base)
    loaded alone with transformers + peft, in-process: what the server must reproduce."""
    import torch

    from modelgit.adapters.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(domains["base"])
    models = {}

    def run(adapter, prompt, max_tokens):
        if adapter not in models:
            models[adapter] = load_model(domains["base"], "causal_lm",
                                         adapter_dir=domains[adapter] if adapter else None)
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = models[adapter].generate(**ids, max_new_tokens=max_tokens, do_sample=False,
                                           pad_token_id=tokenizer.pad_token_id)
        tokens = out[0, ids["input_ids"].shape[1]:].tolist()
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
        return tokenizer.decode(tokens, skip_special_tokens=True)

    return run

