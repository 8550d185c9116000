"""The pieces of review that decide trust, one by one: paths and modes of a git tree, exports,
the metadata a contribution claims, finite scores and thresholds, recorded reviews."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from hostile_git import EXEC, FILE, GITLINK, LINK, TREE, Plumber

from modelgit.errors import FormatError, UsageError


@pytest.fixture
def bare_repo(tmp_path):
    from modelgit.git.repo import find_repo

    subprocess.run(["git", "init", "-q", "-b", "main", str(tmp_path / "r")], check=True)
    return find_repo(str(tmp_path / "r"))


# -- item 1: nothing a tree names becomes a path outside the directory it is written to --------


def test_export_dir_refuses_entries_that_point_outside(bare_repo, tmp_path):
    from modelgit.workflow.gitops import export_dir

    p = Plumber(bare_repo.root)
    payload = p.blob(b"#!/bin/sh\necho pwned\n")
    hooks = p.tree([(TREE, "hooks", p.tree([(EXEC, "pre-push", payload)]))])
    for _ in range(3):
        hooks = p.tree([(TREE, "..", hooks)])
    model = p.tree([(FILE, "config.json", p.blob(b"{}")), (TREE, "..", hooks)])
    commit = p.commit(p.tree([(TREE, "model", model)]), [])
    os.makedirs(tmp_path / "work" / "a")
    with pytest.raises(UsageError, match="cannot be exported safely: '../../../../hooks/pre-push'"):
        export_dir(bare_repo, commit, "model", str(tmp_path / "work" / "a" / "out"))
    assert not os.path.exists(os.path.join(bare_repo.git_dir, "hooks", "pre-push"))
    assert os.listdir(tmp_path / "work" / "a") == []


@pytest.mark.parametrize("entry,fragment", [
    ((LINK, "config.json", "../../../etc/passwd"), "symbolic link"),
    ((GITLINK, "sub", "1" * 40), "commit (mode 160000)"),
    ((FILE, ".git", "x"), "'.git'"),
])
def test_export_dir_refuses_links_submodules_and_git_dirs(bare_repo, tmp_path, entry, fragment):
    from modelgit.workflow.gitops import export_dir

    p = Plumber(bare_repo.root)
    mode, name, data = entry
    oid = data if mode == GITLINK else p.blob(data)
    commit = p.commit(p.tree([(TREE, "model", p.tree([(mode, name, oid)]))]), [])
    with pytest.raises(UsageError, match="cannot be exported safely") as info:
        export_dir(bare_repo, commit, "model", str(tmp_path / "out"))
    assert fragment in str(info.value)


@pytest.mark.parametrize("path,bad", [
    ("adapter_config.json", False), ("a/b.json", False), ("..", True), ("a/../b", True), ("", True),
    ("/etc/passwd", True), ("a\\..\\b", True), (".git/config", True), (".GIT", True), ("a/.git.", True),
    ("a//b", True), ("./a", True), ("x\x00y", True), ("\x1b[2J", True), ("x" * 256, True),
])
def test_path_problem(path, bad):
    from modelgit.workflow.gitops import path_problem

    assert (path_problem(path) is not None) == bad


def test_area_problems_reports_every_entry():
    from modelgit.workflow.intake import Entry, area_problems

    blob = "0" * 40
    rows = [("adapter_config.json", "100644", "blob"), ("adapter_config.json", "100644", "blob"),
            ("metrics.json", "120000", "blob"), ("run.sh", "100755", "blob"), ("sub", "040000", "tree"),
            ("mod", "160000", "commit"), ("..", "040000", "tree"), ("evil.pkl", "100644", "blob"),
            ("contribution.json", "100644", "blob"), ("adapter_model.safetensors", "100644", "blob")]
    problems = area_problems([Entry(name, mode, kind, blob) for name, mode, kind in rows])
    text = "\n".join(problems)
    for fragment in ("appears 2 times", "'metrics.json': a symbolic link", "'run.sh': an executable file",
                     "'sub': a directory", "'mod': a submodule", "'..': the component",
                     "'evil.pkl': not allowed"):
        assert fragment in text
    assert "contribution.json" not in text and "adapter_model.safetensors" not in text
    assert len(problems) == 7


# -- item 3: contribution.json and the metadata are checked as untrusted data --------------------


def _record(**changes) -> dict:
    return {"contribution_version": 1, "name": "ok", "author": "Ada Lovelace <ada@example.org>",
            "message": "LoRA on animals\nsecond line", "domain": "animals", "base_revision": "a" * 40,
            "base_fingerprint": "b" * 64, "data_card": {"records": 3, "bytes": 10, "sha256": "c" * 64},
            **changes}


@pytest.mark.parametrize("changes,fragment", [
    ({}, None),
    ({"contribution_version": 2}, "not 1"),
    ({"name": "other"}, "is not the branch's name"),
    ({"author": "nobody"}, "not of the form"),
    ({"author": "Eve \x1b]0;x\x07 <e@x.org>"}, "control characters"),
    ({"message": "x" * 20_000}, "over the limit of 10000"),
    ({"domain": ["a"]}, "not a string"),
    ({"base_revision": "HEAD"}, "base_revision is missing or not a hex id"),
    ({"base_fingerprint": None}, "base_fingerprint is missing"),
    ({"data_card": {"records": -1}}, "records is -1"),
    ({"data_card": {"bytes": 1e30}}, "not an integer"),
    ({"data_card": {"sha256": "<script>"}}, "sha256 is not a hex digest"),
    ({"metrics": {"loss": -1e30}}, "outside the allowed range"),
    ({"training": [1]}, "training is not a JSON object"),
])
def test_record_problems(changes, fragment):
    from modelgit.workflow.metadata import record_problems

    problems = record_problems(_record(**changes), "ok")
    assert problems == [] if fragment is None else fragment in "\n".join(problems)


def test_metadata_problems():
    from modelgit.workflow.metadata import metadata_problems

    assert metadata_problems("metrics.json", {"first_loss": 4.2, "steps": 30}) == []
    assert "expected a JSON object" in metadata_problems("metrics.json", [1])[0]
    assert "1e+16" in metadata_problems("metrics.json", {"steps": 1e16})[0]
    assert "id2label" in metadata_problems("labels.json", {"id2label": {"x": "a"}})[0]
    assert metadata_problems("labels.json", {"id2label": {"0": "neg", "1": "pos"}}) == []
    assert "base_fingerprint" in metadata_problems("training_config.json",
                                                   {"resolved": {"base_fingerprint": ["x"]}})[0]


# -- item 4: a number that is not finite is never a pass --------------------------------------


def test_a_nan_score_is_a_rejection():
    from modelgit.workflow.policy import decide
    from modelgit.workflow.project import Policy

    policy = Policy(min_gain=0.01, max_regression=0.02)
    nan = {"a": {"base": 10.0, "adapter": float("nan"), "higher_is_better": False},
           "b": {"base": 10.0, "adapter": 5.0, "higher_is_better": False}}
    decision, _, reasons = decide(nan, policy, "a")
    assert decision == "reject" and "a: the score is not a finite number" in reasons[0]
    assert decide(nan, policy, None)[0] == "reject"
    inf = {"a": {"base": float("inf"), "adapter": 1.0, "higher_is_better": False}}
    assert decide(inf, policy, None)[0] == "reject"
    good = {"a": {"base": 10.0, "adapter": 9.0, "higher_is_better": False}}
    assert decide(good, policy, None)[0] == "accept"


def test_thresholds_and_limits_must_be_finite():
    from modelgit.workflow.project import Limits, Policy, parse_project

    nan, inf = float("nan"), float("inf")
    for make in (lambda: Policy(nan, 0.02), lambda: Policy(0.01, inf), lambda: Limits(max_rank=nan),
                 lambda: parse_project({"policy": {"min_gain": nan}}),
                 lambda: parse_project({"limits": {"max_rank": inf}})):
        with pytest.raises(UsageError, match="finite"):
            make()


def test_a_review_with_a_nan_score_is_never_credited(bare_repo):
    """A review recorded before scores were checked: release refuses to credit it."""
    from modelgit.workflow.project import Project
    from modelgit.workflow.releases import accepted_contributions

    def commit_review(scores: str) -> None:
        os.makedirs(os.path.join(bare_repo.root, "reviews"), exist_ok=True)
        with open(os.path.join(bare_repo.root, "reviews", "x.json"), "w") as handle:
            handle.write('{"contribution": "x", "decision": "accept", "scores": %s}' % scores)
        subprocess.run(["git", "add", "-A"], cwd=bare_repo.root, check=True)
        subprocess.run(["git", "commit", "-qm", "review"], cwd=bare_repo.root, check=True)

    commit_review('{"a": {"base": 10.0, "adapter": NaN}}')
    with pytest.raises(FormatError, match="NaN.*review again"):
        accepted_contributions(bare_repo, Project())
    commit_review('{"a": {"base": 10.0, "adapter": null}}')
    with pytest.raises(UsageError, match="not a pair of finite numbers.*Review it again"):
        accepted_contributions(bare_repo, Project())


def test_release_refuses_non_finite_results():
    from modelgit.workflow.releases import _check_finite

    base = [{"suite": "a", "metric": "perplexity", "value": 10.0}]
    with pytest.raises(UsageError, match="non-finite.*nothing was released"):
        _check_finite([{"suite": "a", "metric": "perplexity", "value": float("nan")}], base)
    _check_finite(base, base)


def test_review_records_are_strict_json(bare_repo):
    from modelgit.workflow.review_records import read_reviews

    os.makedirs(os.path.join(bare_repo.root, "reviews"))
    with open(os.path.join(bare_repo.root, "reviews", "x.json"), "w") as handle:
        handle.write(json.dumps({"a": 1}) + "\n")
    subprocess.run(["git", "add", "-A"], cwd=bare_repo.root, check=True)
    subprocess.run(["git", "commit", "-qm", "r"], cwd=bare_repo.root, check=True)
    assert read_reviews(bare_repo) == {"x": {"a": 1}}
