"""The loop through the command line, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from gitutil import git, modelgit
from workflow_helpers import train_adapter


def test_create_contribute_review_release_rebase_by_cli(tmp_path, tiny_base, domain_data, suites):
    import yaml

    remote = tmp_path / "hub.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    out = modelgit(tmp_path, "create", "proj", "--base", tiny_base, "--remote", str(remote),
                   "--base-model", "example/tiny").stdout
    assert "tagged v1" in out and "pushed" in out
    modelgit(tmp_path, "clone", str(remote), "alice")
    train_adapter(str(tmp_path / "alice" / "model"), domain_data["weather"]["train"],
                            str(tmp_path / "adapter"))
    result = modelgit(tmp_path / "alice", "contribute", str(tmp_path / "adapter"), "--name",
                      "weather-lora", "-m", "LoRA on weather", "--domain", "weather",
                      "--author", "Alice <alice@example.org>", "--json")
    assert json.loads(result.stdout)["pushed_to"] == "origin"
    bad = modelgit(tmp_path / "alice", "contribute", str(tmp_path / "adapter"), "--name", "../x",
                   "-m", "x", check=False)
    assert bad.returncode == 2 and "outside the contribution area" in bad.stderr

    suites_file = tmp_path / "suites.yaml"
    suites_file.write_text(yaml.safe_dump({"suites": [
        {"name": s.name, "data": s.data, "validation": s.validation, "metric": "perplexity"}
        for s in suites]}))
    proj = tmp_path / "proj"
    inside = proj / "suites.yaml"  # a suites file inside the repository would get shared
    inside.write_text(suites_file.read_text())
    leak = modelgit(proj, "review", "--suites", str(inside), check=False)
    assert leak.returncode == 2 and "would be shared with contributors" in leak.stderr
    inside.unlink()
    dry = modelgit(proj, "review", "--suites", str(suites_file), "--dry-run").stdout
    assert "anon-" in dry and "Alice" not in dry and "weather-lora" not in dry
    assert "nothing recorded" in dry
    blind = json.loads(modelgit(proj, "review", "--suites", str(suites_file), "--json").stdout)
    assert blind["revealed"][0]["name"] == "weather-lora"
    assert blind["contributions"][0]["decision"] == "accept"
    released = modelgit(proj, "release", "--suites", str(suites_file), "--push").stdout
    assert "released v2" in released and "pushed v2" in released
    assert git(proj, "ls-remote", "--tags", "origin").stdout.count("refs/tags/v2") >= 1

    rebased = modelgit(proj, "rebase", str(tmp_path / "adapter"), "--onto", "v2", "-o",
                       str(tmp_path / "carried"), "--suites", str(suites_file)).stdout
    assert "old base + adapter" in rebased and "new base + adapter" in rebased
    assert os.path.isfile(tmp_path / "carried" / "adapter_model.safetensors")
    nothing = modelgit(proj, "release", "--suites", str(suites_file), check=False)
    assert nothing.returncode == 2 and "nothing to release" in nothing.stderr


@pytest.mark.slow
def test_demo_quick(tmp_path):
    """`modelgit demo --quick`: the whole loop on a tiny model, with real text of this machine."""
    result = modelgit(tmp_path, "demo", "--quick", "--json", "--workdir", str(tmp_path / "d"))
    out = result.stdout
    assert "blind review" in out and "release v2" in out and "per-domain perplexity" in out
    figures = json.loads(out[out.index("\n{") + 1:])
    assert set(figures["base"]) == {"python", "debian", "manpages"}
    assert len(figures["adapters"]) == 3
    for name, scores in figures["adapters"].items():  # each adapter helps its own domain
        domain = name.removesuffix("-lora")
        assert scores[domain] < figures["base"][domain]
    assert sum(figures["release"][d] / figures["base"][d] for d in figures["base"]) < 3
    # the router row: v2's router, loaded by the consumer, on the same held-out texts
    assert "\nrouter (examples, hard)" in out and "6. the consumer loads v2's router" in out
    assert set(figures["router"]) == set(figures["base"])
    assert all(figures["router"][d] < figures["base"][d] for d in figures["base"])
    assert {r["adapter"] for r in figures["routed"]} <= set(figures["adapters"]) | {"base"}
    assert sum(figures["router_accuracy"].values()) / 3 > 0.5


def _suites_file(tmp_path, suites) -> str:
    import yaml

    path = tmp_path / "private-suites.yaml"
    path.write_text(yaml.safe_dump({"suites": [
        {"name": s.name, "data": s.data, "validation": s.validation, "metric": "perplexity"}
        for s in suites]}))
    return str(path)


def test_review_json_push_pushes(hub, contributor, domain_data, suites, tmp_path):
    """`review --json --push` pushes the recorded reviews, as the plain `review --push` does."""
    repo, remote = hub
    clone = contributor("alice")
    adapter = train_adapter(os.path.join(clone.root, "model"), domain_data["cooking"]["train"],
                            str(tmp_path / "adapter"))
    modelgit(clone.root, "contribute", adapter, "--name", "cooking-lora", "-m", "cooking",
             "--domain", "cooking")
    out = json.loads(modelgit(repo.root, "review", "--suites", _suites_file(tmp_path, suites),
                              "--json", "--push").stdout)
    assert out["pushed_to"] == "origin" and out["commits"]
    remote_main = git(tmp_path, "--git-dir", remote, "rev-parse", "refs/heads/main").stdout.strip()
    assert remote_main == out["commits"][-1] == repo.rev_parse("HEAD")
