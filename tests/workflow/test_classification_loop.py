"""A classification project on a bare encoder (a ``BertModel``, as all-MiniLM-L6-v2 ships)
through the whole loop: create --task classification, train, contribute, review, release,
consumer eval (issue 17)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from gitutil import modelgit

from modelgit.eval import SuiteConfig
from modelgit.workflow import Policy, Project, create_project, release, review

NAMES = ["negative", "positive"]
TEXTS = {"negative": ["bad awful poor", "sad bad awful", "poor sad bad", "awful poor sad"],
         "positive": ["good great nice", "nice great good", "great good nice", "nice good great"]}


def _data(path, rows) -> str:
    path.write_text("".join(json.dumps({"text": t, "label": c}) + "\n" for c, t in rows))
    return str(path)


def _rows(repeat=3):
    return [(c, t) for c, texts in TEXTS.items() for t in texts] * repeat


def _review_accepting_all(root: str, tmp_path):
    """(the maintainer's repository, its held-out suites) after a review that accepted every
    contribution (a policy that accepts anything that loads and scores)."""
    from modelgit.git.repo import find_repo

    heldout = tmp_path / "private"
    heldout.mkdir()
    suites = [SuiteConfig(name="sentiment", data=_data(heldout / "h.jsonl", _rows(1)),
                          task="classification", metric="accuracy")]
    repo = find_repo(root)
    report = review(repo, suites, policy=Policy(min_gain=-1, max_regression=1))
    assert {e.decision for e in report.entries} == {"accept"}
    return repo, suites


@pytest.fixture
def project(tmp_path):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from modelgit.adapters.tiny import tiny_classifier

    cls = tiny_classifier(tmp_path / "cls", [t for ts in TEXTS.values() for t in ts])
    encoder = tmp_path / "encoder"  # no head of any kind, names without `bert.`
    BertForSequenceClassification.from_pretrained(cls).bert.save_pretrained(encoder)
    AutoTokenizer.from_pretrained(cls).save_pretrained(encoder)
    remote = str(tmp_path / "hub.git")
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", remote], check=True)
    assert modelgit(tmp_path, "create", str(tmp_path / "maintainer"), "--base", str(encoder),
                    "--task", "classification", "--name", "sentiment", "--remote", remote,
                    check=False).returncode == 0
    return str(tmp_path / "maintainer"), remote


def test_a_classification_project_goes_from_contribution_to_consumer(project, tmp_path):
    root, remote = project
    config = yaml.safe_load(open(os.path.join(root, "modelgit.yaml")))
    assert config["task"] == "classification"
    for who in ("alice", "bob"):
        modelgit(tmp_path, "clone", remote, who)
        clone = str(tmp_path / who)
        out = str(tmp_path / f"{who}-adapter")
        modelgit(tmp_path, "train", os.path.join(clone, "model"), "--data",
                 _data(tmp_path / f"{who}.jsonl", _rows()), "-o", out, "--steps", "8", "--lr", "0.01",
                 "--threads", "1", "--seed", str(len(who)), "--labels", ",".join(NAMES))
        modelgit(clone, "contribute", out, "--name", f"{who}-lora", "-m", f"{who}'s classifier")
    repo, suites = _review_accepting_all(root, tmp_path)
    done = release(repo, suites, push="origin")
    model = os.path.join(repo.root, "model")
    released = json.load(open(os.path.join(model, "config.json")))
    assert released["architectures"] == ["BertForSequenceClassification"]
    assert released["id2label"] == {"0": "negative", "1": "positive"}
    card = open(os.path.join(model, "README.md")).read()
    assert "pipeline_tag: text-classification" in card
    assert "accuracy" in card.lower()
    assert done.tag

    # a consumer clones the release and evaluates it as a classifier
    modelgit(tmp_path, "clone", remote, "consumer")
    consumer = str(tmp_path / "consumer" / "model")
    # (no --task: a sequence classifier is evaluated as one)
    result = modelgit(tmp_path, "eval", consumer, "--data", suites[0].data, "--json")
    values = json.loads(result.stdout)
    values = values[0] if isinstance(values, list) else values
    assert "accuracy" in json.dumps(values) and "macro_f1" in json.dumps(values)


def test_a_project_of_probe_classifiers_releases_a_mean_pooled_classifier(project, tmp_path):
    """modelgit.yaml's `classifier: probe`: `train` in a clone fits probe classifiers (no steps),
    `contribute` refuses a tuned one, and the release is a stock BERT classifier one layer deeper."""
    root, remote = project
    path = os.path.join(root, "modelgit.yaml")
    config = yaml.safe_load(open(path))
    layers = json.load(open(os.path.join(root, "model", "config.json")))["num_hidden_layers"]
    config["classifier"] = "probe"
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle)
    subprocess.run(["git", "-C", root, "commit", "-qam", "classifier: probe"], check=True)
    subprocess.run(["git", "-C", root, "push", "-q", "origin", "HEAD:main"], check=True)
    for who in ("alice", "bob"):
        modelgit(tmp_path, "clone", remote, who)
        clone = str(tmp_path / who)
        out = str(tmp_path / f"{who}-adapter")
        modelgit(tmp_path, "train", os.path.join(clone, "model"), "--data",
                 _data(tmp_path / f"{who}.jsonl", _rows(2 + len(who) % 2)), "-o", out,
                 "--threads", "1", "--labels", ",".join(NAMES))
        assert json.load(open(os.path.join(out, "labels.json")))["pooling"] == "mean"
        modelgit(clone, "contribute", out, "--name", f"{who}-probe", "-m", f"{who}'s probe")
    tuned = str(tmp_path / "tuned-adapter")  # the other kind: refused with the way out
    modelgit(tmp_path, "train", os.path.join(str(tmp_path / "bob"), "model"), "--data",
             _data(tmp_path / "t.jsonl", _rows()), "-o", tuned, "--steps", "2", "--threads", "1",
             "--classifier", "tuned", "--labels", ",".join(NAMES))
    refused = modelgit(str(tmp_path / "bob"), "contribute", tuned, "--name", "bob-tuned", "-m", "x",
                       check=False)
    assert refused.returncode != 0 and "--classifier probe" in refused.stderr
    assert "Traceback" not in refused.stderr
    repo, suites = _review_accepting_all(root, tmp_path)
    release(repo, suites, push="origin")
    released = json.load(open(os.path.join(repo.root, "model", "config.json")))
    assert released["num_hidden_layers"] == layers + 1
    modelgit(tmp_path, "clone", remote, "consumer")
    result = modelgit(tmp_path, "eval", str(tmp_path / "consumer" / "model"), "--data",
                      suites[0].data, "--json")
    values = json.loads(result.stdout)
    values = values[0] if isinstance(values, list) else values
    assert values["metrics"]["accuracy"] == 1.0  # the two words' groups apart, as the probes fit them
