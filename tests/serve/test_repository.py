"""`modelgit serve REPO --rev TAG`: a release made by the collaborative loop (two specialist
adapters and an `examples` router), served from a consumer's clone: the tag, each adapter of
its library, and `auto` behind the release's router."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess

import httpx
import pytest

from gitutil import git_env, modelgit  # noqa: F401  (autouse: private HOME and git identity)
from workflow_helpers import train_adapter

_spec = importlib.util.spec_from_file_location(
    "_workflow_fixtures", pathlib.Path(__file__).parent.parent / "workflow" / "conftest.py")
_workflow = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_workflow)
tiny_base, domain_data, suites = _workflow.tiny_base, _workflow.domain_data, _workflow.suites


@pytest.fixture
def released(tmp_path, tiny_base, domain_data, suites):
    """A consumer's clone of a repository whose release v2 holds two specialists and a router."""
    import yaml

    remote = tmp_path / "hub.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    modelgit(tmp_path, "create", "proj", "--base", tiny_base, "--remote", str(remote))
    proj = tmp_path / "proj"
    for who, domain in (("alice", "animals"), ("bob", "cooking")):
        modelgit(tmp_path, "clone", str(remote), who)
        adapter = train_adapter(str(tmp_path / who / "model"), domain_data[domain]["train"],
                                str(tmp_path / f"{who}-adapter"))
        modelgit(tmp_path / who, "contribute", adapter, "--name", f"{domain}-lora", "-m",
                 domain, "--domain", domain, "--author", f"{who} <{who}@example.org>")
    suites_file = tmp_path / "suites.yaml"
    suites_file.write_text(yaml.safe_dump({"suites": [
        {"name": s.name, "data": s.data, "validation": s.validation, "metric": "perplexity"}
        for s in suites]}))
    dry = json.loads(modelgit(proj, "review", "--suites", str(suites_file), "--dry-run",
                              "--json").stdout)
    overrides = [x for e in dry["contributions"] for x in ("--override", f"{e['anon_id']}=specialist")]
    modelgit(proj, "review", "--suites", str(suites_file), *overrides)
    modelgit(proj, "release", "--suites", str(suites_file), "--router", "examples", "--push")
    modelgit(tmp_path, "clone", str(remote), "consumer")
    return tmp_path / "consumer"


@pytest.mark.slow
def test_a_release_is_served_with_its_library_and_router(released, serve):
    described = json.loads(modelgit(released, "serve", "--check", "--json").stdout)
    assert described["models"] == ["base", "v2", "animals-lora", "cooking-lora", "auto"]
    typo = modelgit(released, "serve", "--rev", "v22", "--check", check=False)
    assert typo.returncode == 2 and "did you mean 'v2'" in typo.stderr
    server = serve(str(released), "v2", batch_window_ms=0)
    url = server.url + "/v1/completions"

    def complete(model, prompt):
        answer = httpx.post(url, timeout=None, json={"model": model, "prompt": prompt,
                                                     "max_tokens": 5})
        assert answer.status_code == 200, answer.text
        return answer.json()["choices"][0]["text"]

    assert complete("v2", "the cat") == complete("base", "the cat")
    from modelgit import route

    routed = route.load(str(released), "v2")
    for prompt in ("the dog ran in the", "boil the pasta in"):
        decided = routed.route([prompt])[0].adapter
        assert complete("auto", prompt) == complete(decided, prompt), decided
