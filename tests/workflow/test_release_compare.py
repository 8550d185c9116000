"""release --dry-run and a comparison of several merge methods in one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from workflow_helpers import model_dir, train_adapter

from modelgit.errors import UsageError
from modelgit.workflow import contribute, release, review


@pytest.fixture
def accepted(hub, contributor, domain_data, suites, tmp_path):
    repo, _ = hub
    for domain in ("animals", "cooking"):
        clone = contributor(domain)
        adapter = train_adapter(model_dir(clone), domain_data[domain]["train"],
                                str(tmp_path / f"{domain}-adapter"))
        contribute(clone, adapter, f"{domain}-lora", f"LoRA on {domain}", domain=domain)
    review(repo, suites)
    return repo


def _state(repo) -> dict:
    files = {}
    for top, _dirs, names in os.walk(repo.root):
        if "/.git" in top + "/":
            continue
        for name in names:
            path = os.path.join(top, name)
            files[os.path.relpath(path, repo.root)] = open(path, "rb").read()
    return {"head": repo.rev_parse("HEAD"), "tags": repo.git("tag").decode(),
            "status": repo.git("status", "--porcelain", "--ignored").decode(), "files": files}


def test_dry_run_compares_methods_and_changes_nothing(accepted, suites):
    repo = accepted
    before = _state(repo)
    done = release(repo, suites, method="ties,linear,task_arithmetic", dry_run=True)
    assert done.dry_run and done.commit is None and done.tag == "v2"
    assert _state(repo) == before  # no weights, card, record, commit or tag
    comparison = done.record["comparison"]
    assert [m["method"] for m in comparison["methods"]] == ["ties", "linear", "task_arithmetic"]
    assert "validation data" in comparison["basis"]
    best = max(comparison["methods"], key=lambda m: m["objective"])
    assert comparison["chosen"] == best["method"] == done.record["method"]
    assert "density" not in comparison["methods"][1]["parameters"]  # linear takes no density
    for m in comparison["methods"]:
        assert [r["suite"] for r in m["results"]] == [s.name for s in suites]
        assert all(len(r["gain_interval"]) == 2 for r in m["results"])
    # the real release with the same methods picks the same one, and records the table
    real = release(repo, suites, method=["ties", "linear", "task_arithmetic"])
    assert real.record["method"] == done.record["method"] and real.commit == repo.rev_parse("v2")
    assert real.record["comparison"]["chosen"] == comparison["chosen"]
    card = open(os.path.join(model_dir(repo), "README.md")).read()
    assert "### Methods compared" in card and f"{comparison['chosen']} (released)" in card
    assert "95% bootstrap intervals" in card
    recorded = json.loads(open(os.path.join(repo.root, "releases", "v2.json")).read())
    assert recorded["results"][0]["interval"] and "documents" not in json.dumps(recorded)


def test_unknown_or_repeated_methods_are_refused(accepted, suites):
    with pytest.raises(UsageError, match="unknown merge method 'tise' \\(did you mean 'ties'\\?\\)"):
        release(accepted, suites, method="tise,linear", dry_run=True)
    with pytest.raises(UsageError, match="names a method twice"):
        release(accepted, suites, method="ties,ties", dry_run=True)


def test_release_cli_dry_run_prints_the_table_and_progress_lines(accepted, suites, tmp_path,
                                                                 monkeypatch):
    repo = accepted
    path = tmp_path / "private-suites.yaml"
    path.write_text(yaml.safe_dump({"suites": [
        {"name": s.name, "data": s.data, "validation": s.validation, "metric": "perplexity"}
        for s in suites]}))
    monkeypatch.delenv("MODELGIT_PROGRESS", raising=False)
    monkeypatch.setenv("MODELGIT_PROGRESS_INTERVAL", "0")  # a line per step: no clock involved
    head = repo.rev_parse("HEAD")
    done = subprocess.run([sys.executable, "-m", "modelgit", "release", "--suites", str(path),
                           "--method", "ties,linear", "--dry-run"], cwd=repo.root,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0].split() == ["method", *[s.name for s in suites], "objective"]
    assert {out[1].split()[0], out[2].split()[0]} == {"ties", "linear"}
    assert any(line.endswith("the best mean relative gain on the suites' validation data")
               for line in out)
    assert any(line.startswith("would release v2") for line in out)
    assert "dry run: nothing written, committed, tagged or pushed" in done.stdout
    assert "release: merging with ties (1 of 2)" in done.stderr
    assert "merge (ties): " in done.stderr and "eval animals: batch 1/1" in done.stderr
    assert repo.rev_parse("HEAD") == head and repo.rev_parse("v2") is None
