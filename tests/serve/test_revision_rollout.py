"""Rollouts between two releases of one repository: `modelgit serve REPO --rev v2 --rollout
ab=v1:0.3,v2:0.7` holds v2's merged weights beside v1 (the base of v2's library), splits `ab`
within a binomial tolerance of its weights, keeps a client on one variant by its header, counts
each variant in /metrics, and refuses an unknown revision at start."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import subprocess

import httpx
import pytest

from gitutil import private_git_env
from serve_helpers import metric
from workflow_helpers import train_adapter

from modelgit.errors import UsageError
from modelgit.serve.rollout import parse_rollout

_spec = importlib.util.spec_from_file_location(
    "_workflow_fixtures", pathlib.Path(__file__).parent.parent / "workflow" / "conftest.py")
_workflow = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_workflow)
tiny_base, domain_data = _workflow.tiny_base, _workflow.domain_data


@pytest.fixture(scope="session")
def two_releases(tmp_path_factory, tiny_base, domain_data):
    """A repository whose v1 is the tiny base and whose v2 merged one accepted LoRA: two
    releases with different weights (v1 is also the base of v2's adapter library)."""
    import yaml

    from modelgit.eval import load_suites
    from modelgit.git import setup
    from modelgit.workflow import Project, contribute, create_project, release, review

    root = tmp_path_factory.mktemp("two-releases")
    with pytest.MonkeyPatch.context() as patch:
        private_git_env(patch, root)
        remote = str(root / "hub.git")
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", remote], check=True)
        repo = create_project(str(root / "maintainer"), tiny_base,
                              Project(name="tiny", base_model="example/tiny-llama"), remote=remote)
        clone = setup.clone(remote, str(root / "alice"))
        adapter = train_adapter(str(root / "alice" / "model"), domain_data["animals"]["train"],
                                str(root / "adapter"), steps=10)  # only to differ from v1
        contribute(clone, adapter, "animals-lora", "LoRA on animals", author="a <a@example.org>",
                   domain="animals", remote="origin")
        (root / "private").mkdir()
        (root / "private" / "suites.yaml").write_text(yaml.safe_dump({"suites": [
            {"name": n, "data": domain_data[n]["heldout"], "metric": "perplexity"}
            for n in ("animals",)]}))
        suites = load_suites(root / "private" / "suites.yaml")
        pending = review(repo, suites, remote="origin", dry_run=True)
        review(repo, suites, remote="origin",
               overrides={e.anon_id: "accept" for e in pending.entries})
        release(repo, suites)
    return repo.root


def _reference_completion(model_dir: str, prompt: str, max_tokens: int) -> str:
    """Greedy text of the model directory loaded with transformers, in-process."""
    import torch

    from modelgit.adapters.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, "causal_lm")
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    tokens = out[0, ids["input_ids"].shape[1]:].tolist()
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


def test_a_rollout_between_two_releases_over_http(two_releases, serve):
    server = serve(two_releases, "v2", batch_window_ms=0, seed=3,
                   rollouts=(parse_rollout("ab=v1:0.3,v2:0.7"),
                             parse_rollout("same=main:1,v2:1")))
    service = server.config.app.state.service
    # v1 is the library's base (shared); v2 and main (the same weights) share one more model
    assert len(service.backends) == 2
    assert service.revision_commits.keys() == {"v2", "main"}
    models = [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]
    assert models == ["base", "v1", "animals-lora", "v2", "main", "ab", "same"]

    with httpx.Client(base_url=server.url, timeout=None) as client:
        def embed(model, headers=None):
            answer = client.post("/v1/embeddings", json={"model": model, "input": "the cat"},
                                 headers=headers or {})
            assert answer.status_code == 200, answer.text
            return answer.json()["model"], answer.json()["data"][0]["embedding"]

        direct = {name: embed(name)[1] for name in ("v1", "v2")}
        assert max(abs(a - b) for a, b in zip(direct["v1"], direct["v2"])) > 1e-3  # they differ
        completion = client.post("/v1/completions", json={"model": "v2", "prompt": "the dog",
                                                          "max_tokens": 6}).json()
        assert completion["model"] == "v2"
        assert completion["choices"][0]["text"] == _reference_completion(
            str(pathlib.Path(two_releases) / "model"), "the dog", 6)  # the work tree is v2

        users, counts, sticky = 300, {"v1": 0, "v2": 0}, {}
        for user in range(users):
            served, vector = embed("ab", {"x-modelgit-user": f"user-{user}"})
            counts[served] += 1
            assert vector == pytest.approx(direct[served], abs=1e-5)  # answered by that model
            sticky[user] = served
        for user in range(20):  # the same users again: the same variants
            served, _ = embed("ab", {"x-modelgit-user": f"user-{user}"})
            assert served == sticky[user]
            counts[served] += 1
        for _ in range(100):  # without the header: the seeded generator
            counts[embed("ab")[0]] += 1
    total = users + 20 + 100
    expected, sd = 0.7 * total, math.sqrt(total * 0.7 * 0.3)
    assert abs(counts["v2"] - expected) <= 4 * sd, counts  # hashes and seed: deterministic
    metrics = httpx.get(server.url + "/metrics").text
    for variant in ("v1", "v2"):
        assert metric(metrics, "modelgit_rollout_requests_total", rollout="ab",
                      variant=variant, status="200") == counts[variant]
        assert metric(metrics, "modelgit_rollout_latency_seconds_count", rollout="ab",
                      variant=variant) == counts[variant]


def test_an_unknown_revision_is_refused_at_start(two_releases, capsys):
    from modelgit.cli.main import main
    from modelgit.serve import ServeConfig, create_app
    from modelgit.serve.api_errors import APIError

    # without a rollout naming it, v2's merged weights are not held: its 404 says how to
    plain = create_app(two_releases, "v2").state.service
    with pytest.raises(APIError) as unserved:
        plain.choose("v2", {})
    assert unserved.value.status == 404 and "--rollout ab=v1:0.5,v2:0.5" in \
        unserved.value.detail.message

    with pytest.raises(UsageError, match="nor a revision of .*did you mean 'v2'"):
        create_app(two_releases, "v2", ServeConfig(rollouts=(parse_rollout("ab=v1:1,v22:1"),)))
    # the CLI in-process (a subprocess would spend its time importing torch)
    assert main(["serve", two_releases, "--rev", "v2", "--rollout", "ab=v1:1,v22:1",
                 "--check"]) == 2
    refused = capsys.readouterr().err
    assert "'v22' is neither a model this server serves" in refused, refused
    assert main(["serve", two_releases, "--rev", "v2", "--rollout", "ab=v1:1,v2:3", "--check",
                 "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["models"] == ["base", "v1", "animals-lora", "v2", "ab"]
    assert list(described["revisions"]) == ["v2"]
    assert described["rollouts"] == {"ab": {"v1": 0.25, "v2": 0.75}}


def test_the_first_release_has_no_library_and_is_served_and_predicted(two_releases, serve,
                                                                        tmp_path):
    """v1 (made by `modelgit create`) records no library: its own weights are served (as
    `base` and `v1`) and predicted, and a rollout can still reach v2."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modelgit.predict import predict

    server = serve(two_releases, "v1", batch_window_ms=0,
                   rollouts=(parse_rollout("ab=v1:1,v2:1"),))
    assert [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]] == \
        ["base", "v1", "v2", "ab"]
    with httpx.Client(base_url=server.url, timeout=None) as client:
        vectors = {m: client.post("/v1/embeddings", json={"model": m, "input": "the cat"})
                   .json()["data"][0]["embedding"] for m in ("base", "v1", "v2")}
    assert vectors["base"] == vectors["v1"] and vectors["v1"] != vectors["v2"]
    texts = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": ["the cat sat on the mat", "the dog ran"]}), texts)
    scores = {}
    for rev in ("v1", "v2"):
        predict(source=two_releases, rev=rev, input=str(texts), task="score",
                output=str(tmp_path / f"{rev}.parquet"))
        scores[rev] = pq.read_table(tmp_path / f"{rev}.parquet").column("nll").to_pylist()
    assert scores["v1"] != scores["v2"]
