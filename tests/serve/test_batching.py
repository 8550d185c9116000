"""Mixed-adapter batching over real HTTP: concurrent requests for different adapters run in one
generate call and give each adapter's own output; adapters load on demand and are evicted under
the LRU bound; a failing request fails alone."""

from __future__ import annotations

import concurrent.futures

import httpx

from route_texts import ANIMALS, CODE
from serve_helpers import metric

# different adapters, different prompt lengths (left padding must not change the outputs)
REQUESTS = [("animals", ANIMALS[0][:22]), ("code", CODE[0][:12]), ("base", ANIMALS[1][:15]),
            ("code", CODE[2][:25]), ("animals", ANIMALS[3][:9]), ("base", CODE[4][:11])]
NO_WINDOW_LIMIT = 600_000  # ms: a batch closes when it is full, never by the clock


def _post_all(url: str, requests, max_tokens: int = 8, path: str = "/v1/completions"):
    def one(item):
        model, prompt = item
        return httpx.post(url + path, timeout=None,
                          json={"model": model, "prompt": prompt, "max_tokens": max_tokens})

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_concurrent_requests_for_different_adapters_share_one_generate_call(serve, lm_library,
                                                                            alone):
    server = serve(lm_library, batch_window_ms=NO_WINDOW_LIMIT, max_batch=len(REQUESTS))
    answers = _post_all(server.url, REQUESTS)
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    for (model, prompt), answer in zip(REQUESTS, answers):
        assert answer.json()["choices"][0]["text"] == alone(None if model == "base" else model,
                                                            prompt, 8), (model, prompt)
    metrics = httpx.get(server.url + "/metrics").text
    # one model call held all six requests, over three targets (two adapters and the base)
    assert metric(metrics, "modelgit_batch_size_count", task="generate") == 1
    assert metric(metrics, "modelgit_batch_size_sum", task="generate") == len(REQUESTS)
    assert metric(metrics, "modelgit_batch_adapters_sum") == 3
    assert metric(metrics, "modelgit_tokens_total", model="code", kind="completion") > 0


def test_adapters_are_evicted_least_recently_used_first(serve, lm_library, alone):
    server = serve(lm_library, max_adapters=1, batch_window_ms=0)
    order = ["animals", "code", "animals", "base", "code"]
    for model in order:
        prompt = ANIMALS[4][:20]
        answer = httpx.post(server.url + "/v1/completions", timeout=None,
                            json={"model": model, "prompt": prompt, "max_tokens": 6})
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["text"] == alone(None if model == "base" else model,
                                                            prompt, 6)
        assert len(httpx.get(server.url + "/health").json()["adapters_loaded"]) == 1
    metrics = httpx.get(server.url + "/metrics").text
    # loads: animals, code, animals, code (base needs none); each load after the first evicts
    assert metric(metrics, "modelgit_adapter_events_total", event="load") == 4
    assert metric(metrics, "modelgit_adapter_events_total", event="evict") == 3
    assert metric(metrics, "modelgit_adapters_loaded") == 1
    assert httpx.get(server.url + "/health").json()["adapters_loaded"] == ["code"]


def test_a_batch_needing_more_adapters_than_the_bound_is_split(serve, lm_library, alone):
    server = serve(lm_library, max_adapters=1, batch_window_ms=NO_WINDOW_LIMIT,
                   max_batch=len(REQUESTS))
    answers = _post_all(server.url, REQUESTS)
    for (model, prompt), answer in zip(REQUESTS, answers):
        assert answer.json()["choices"][0]["text"] == alone(None if model == "base" else model,
                                                            prompt, 8)


def test_an_adapter_that_fails_to_load_fails_only_its_requests(serve, domains, tmp_path, alone):
    import shutil

    from modelgit.route import Library

    broken = tmp_path / "broken"
    shutil.copytree(domains["code"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\0" * 64)  # damaged after the library
    library = Library.from_dirs(domains["base"], {"animals": domains["animals"], "broken": str(broken)})
    server = serve(library, batch_window_ms=NO_WINDOW_LIMIT, max_batch=3)
    answers = _post_all(server.url, [("animals", "the dog"), ("broken", "the dog"), ("base", "a cat")])
    assert answers[0].json()["choices"][0]["text"] == alone("animals", "the dog", 8)
    assert answers[2].json()["choices"][0]["text"] == alone(None, "a cat", 8)
    error = answers[1].json()["error"]
    assert answers[1].status_code == 500 and error["code"] == "adapter_load_failed"
    assert "broken" in error["message"] and "Traceback" not in answers[1].text
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_failing_batch_runs_each_request_alone(serve, lm_library, alone, monkeypatch):
    from modelgit.serve.engine import Engine

    real = Engine._generate

    def fails_on_mixed(self, jobs):  # a batch-level failure: any call with several requests
        if len(jobs) > 1:
            raise RuntimeError("simulated failure of a batched call")
        if jobs[0].ids == self.pool.tokenizer("poison")["input_ids"]:
            raise RuntimeError("this request's own failure")
        return real(self, jobs)

    monkeypatch.setattr(Engine, "_generate", fails_on_mixed)
    server = serve(lm_library, batch_window_ms=NO_WINDOW_LIMIT, max_batch=3)
    answers = _post_all(server.url, [("animals", "the dog"), ("code", "poison"), ("base", "a cat")])
    assert answers[0].json()["choices"][0]["text"] == alone("animals", "the dog", 8)
    assert answers[2].json()["choices"][0]["text"] == alone(None, "a cat", 8)
    assert answers[1].status_code == 500
    assert answers[1].json()["error"]["type"] == "server_error"
    assert "own failure" in answers[1].json()["error"]["message"]
