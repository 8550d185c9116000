"""A project's class names fix every classifier's numbering: train uses them, contribute and
review refuse an adapter numbered otherwise."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from gitutil import git, modelgit

from modelgit.workflow import Project, create_project, review

NAMES = ["negative", "neutral", "positive"]
TEXTS = {"negative": ["bad awful poor", "sad bad awful"], "neutral": ["plain fine okay", "okay plain"],
         "positive": ["good great nice", "nice great good"]}


def _data(path, classes) -> str:
    path.write_text("".join(json.dumps({"text": t, "label": c}) + "\n"
                            for c in classes for t in TEXTS[c] * 3))
    return str(path)


@pytest.fixture
def project(tmp_path):
    from modelgit.adapters.tiny import tiny_classifier

    base = tiny_classifier(tmp_path / "base", [t for ts in TEXTS.values() for t in ts], num_labels=3)
    with open(os.path.join(base, "config.json")) as handle:  # the base's head names its classes
        config = json.load(handle)
    config.update(id2label={str(i): n for i, n in enumerate(NAMES)},
                  label2id={n: i for i, n in enumerate(NAMES)})
    with open(os.path.join(base, "config.json"), "w") as handle:
        json.dump(config, handle)
    remote = str(tmp_path / "hub.git")
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", remote], check=True)
    repo = create_project(str(tmp_path / "maintainer"), base,
                          Project(name="sentiment", task="classification"), remote=remote)
    return repo, remote


def _train(tmp_path, clone, name, classes, *extra) -> str:
    out = str(tmp_path / name)
    modelgit(tmp_path, "train", os.path.join(clone, "model"), "--data",
             _data(tmp_path / f"{name}.jsonl", classes), "-o", out, "--steps", "2", "--threads", "1",
             *extra)
    return out


def test_the_projects_labels_number_every_adapter(project, tmp_path):
    repo, remote = project
    modelgit(tmp_path, "clone", remote, "alice")
    alice = str(tmp_path / "alice")
    fixed = _train(tmp_path, alice, "fixed", ["negative", "positive"], "--labels", ",".join(NAMES))
    # a contributor's own numbering: positive is class 0 here, class 2 in the other
    own = _train(tmp_path, alice, "own", ["negative", "positive"], "--labels",
                 "positive,negative,neutral")
    for name, adapter in (("fixed", fixed), ("own", own)):
        modelgit(alice, "contribute", adapter, "--name", name, "-m", name)  # no labels yet: both pass

    # the maintainers fix the numbering: the adapter numbered by its own data is refused
    config = yaml.safe_load(open(os.path.join(repo.root, "modelgit.yaml")))
    with open(os.path.join(repo.root, "modelgit.yaml"), "w") as handle:
        yaml.safe_dump({**config, "labels": NAMES}, handle)
    git(repo.root, "commit", "-qam", "fix the class numbering")
    git(repo.root, "push", "-q", "origin", "main")
    heldout = tmp_path / "private"
    heldout.mkdir()
    from modelgit.eval import SuiteConfig

    suites = [SuiteConfig(name="sentiment", data=_data(heldout / "h.jsonl", NAMES),
                          task="classification", metric="accuracy")]
    from modelgit.workflow import Policy

    report = review(repo, suites, dry_run=True, policy=Policy(min_gain=-1, max_regression=1))
    decisions = {e.contribution.name: e for e in report.entries}
    assert not any("project's labels" in r for r in decisions["fixed"].reasons)
    assert decisions["own"].decision == "reject"
    assert any("its classes are numbered positive, negative, neutral, but the project's labels (in "
               "modelgit.yaml) are negative, neutral, positive" in r for r in decisions["own"].reasons)

    # a contributor training inside the repository gets the project's numbering without a flag
    git(alice, "pull", "-q", "origin", "main")
    trained = _train(tmp_path, alice, "inside", ["neutral", "positive"])
    assert json.load(open(os.path.join(trained, "labels.json")))["id2label"] == {
        "0": "negative", "1": "neutral", "2": "positive"}
    modelgit(alice, "contribute", trained, "--name", "inside", "-m", "inside")
    refused = modelgit(alice, "contribute", own, "--name", "own2", "-m", "x", check=False)
    assert refused.returncode == 2 and "numbered positive, negative, neutral" in refused.stderr
    assert "train it again with `--labels negative,neutral,positive`" in refused.stderr


def test_modelgit_yaml_labels_are_checked():
    from modelgit.errors import UsageError
    from modelgit.workflow.project import parse_project

    assert parse_project({"task": "classification", "labels": "a, b"}).labels == ("a", "b")
    for bad, message in (({"task": "classification", "labels": ["a", "a"]}, "more than once"),
                         ({"task": "classification", "labels": ["a"]}, "between 2"),
                         ({"task": "classification", "labels": [1, 2]}, "not a list of class names"),
                         ({"labels": ["a", "b"]}, "class names are for task: classification"),
                         ({"lables": ["a", "b"]}, "did you mean 'labels'")):
        with pytest.raises(UsageError, match=message):
            parse_project(bad)
