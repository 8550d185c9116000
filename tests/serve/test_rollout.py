"""Rollouts: parsing, a weighted split within a binomial tolerance of its weights, stickiness by
header, and per-variant counters and latencies in /metrics."""

from __future__ import annotations

import math

import httpx
import pytest

from modelgit.errors import UsageError
from modelgit.serve.rollout import Chooser, parse_rollout, read_rollouts
from serve_helpers import metric


def test_parse_rollout_and_its_refusals(tmp_path):
    rollout = parse_rollout("chat=animals:0.9,code:0.1")
    assert rollout.name == "chat" and rollout.variants == (("animals", 0.9), ("code", 0.1))
    assert parse_rollout("x=a:3,b:1").variants == (("a", 0.75), ("b", 0.25))  # normalized
    for bad, says in (("chat", "NAME=MODEL_A"), ("chat=a:0.5", "2 to 16"),
                      ("chat=a:1,a:1", "twice"), ("chat=a:1,b:-1", "positive"),
                      ("chat=a:1,b:x", "NAME=MODEL_A"), ("c h=a:1,b:1", "letters")):
        with pytest.raises(UsageError, match=says):
            parse_rollout(bad)
    path = tmp_path / "rollouts.yaml"
    path.write_text("rollouts:\n  chat: {animals: 9, code: 1}\n")
    assert read_rollouts(str(path))[0].variants == (("animals", 0.9), ("code", 0.1))
    path.write_text("rollouts: [1, 2]\n")
    with pytest.raises(UsageError, match="expected"):
        read_rollouts(str(path))


def test_a_sticky_header_keeps_a_client_on_one_variant():
    rollout = parse_rollout("chat=a:0.5,b:0.5")
    chooser = Chooser(seed=1)
    assert len({chooser.choose(rollout, "user-7") for _ in range(20)}) == 1
    assert Chooser(seed=2).choose(rollout, "user-7") == chooser.choose(rollout, "user-7")
    # without a header: the seeded generator, reproducible
    first, second = Chooser(5), Chooser(5)
    draws = [first.choose(rollout, None) for _ in range(20)]
    assert draws == [second.choose(rollout, None) for _ in range(20)] and len(set(draws)) == 2


def test_unknown_variants_are_refused_naming_the_closest(lm_library):
    from modelgit.serve import ServeConfig, create_app

    with pytest.raises(UsageError, match="did you mean 'animals'"):
        create_app(lm_library, config=ServeConfig(rollouts=(parse_rollout("ab=animal:1,code:1"),)))
    with pytest.raises(UsageError, match="name of a served model"):
        create_app(lm_library, config=ServeConfig(rollouts=(parse_rollout("code=animals:1,base:1"),)))


def test_an_ab_split_over_http_follows_its_weights(serve, lm_library):
    server = serve(lm_library, rollouts=(parse_rollout("ab=animals:0.8,code:0.2"),))
    assert "ab" in [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]
    users, counts = 300, {"animals": 0, "code": 0}
    with httpx.Client(base_url=server.url, timeout=None) as client:
        for user in range(users):
            body = {"model": "ab", "input": "the cat"}
            answer = client.post("/v1/embeddings", json=body,
                                 headers={"x-modelgit-user": f"user-{user}"})
            counts[answer.json()["model"]] += 1
            if user < 5:  # the same user again: the same variant
                again = client.post("/v1/embeddings", json=body,
                                    headers={"x-modelgit-user": f"user-{user}"})
                assert again.json()["model"] == answer.json()["model"]
                counts[again.json()["model"]] += 1
        # without the header: the seeded generator
        for _ in range(100):
            counts[client.post("/v1/embeddings", json={"model": "ab", "input": "x"}).json()["model"]] += 1
    total = users + 5 + 100
    expected, sd = 0.8 * total, math.sqrt(total * 0.8 * 0.2)
    assert abs(counts["animals"] - expected) <= 4 * sd, counts  # hashes and seed: deterministic
    metrics = httpx.get(server.url + "/metrics").text
    assert metric(metrics, "modelgit_rollout_requests_total", rollout="ab", variant="animals") \
        == counts["animals"]
    assert metric(metrics, "modelgit_rollout_latency_seconds_count", rollout="ab",
                  variant="code") == counts["code"]
