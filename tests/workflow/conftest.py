"""A model repository around a tiny causal LM, a bare remote, three tiny text domains."""

from __future__ import annotations

import json
import subprocess

import pytest

from gitutil import git_env  # noqa: F401  (autouse: private HOME and git identity)
from model_fixtures import one_thread  # noqa: F401  (autouse)
from workflow_helpers import DOMAINS

def _jsonl(path, texts) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    from modelgit.adapters.tiny import tiny_causal_lm

    words = [t for texts in DOMAINS.values() for t in texts]
    return tiny_causal_lm(tmp_path_factory.mktemp("base") / "base", words, seed=0)


@pytest.fixture(scope="session")
def domain_data(tmp_path_factory):
    """{domain: {"train": path, "heldout": path}}; held-out = the same kind of sentences."""
    root = tmp_path_factory.mktemp("domains")
    out = {}
    for name, texts in DOMAINS.items():
        out[name] = {"train": _jsonl(root / f"{name}-train.jsonl", texts * 4),
                     "heldout": _jsonl(root / f"{name}-heldout.jsonl", texts[::2]),
                     "validation": _jsonl(root / f"{name}-valid.jsonl", texts[1::2])}
    return out


@pytest.fixture
def suites(domain_data, tmp_path):
    from modelgit.eval import load_suites

    import yaml

    path = tmp_path / "private" / "suites.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"suites": [
        {"name": n, "data": d["heldout"], "validation": d["validation"], "metric": "perplexity"}
        for n, d in domain_data.items()]}))
    return load_suites(path)


@pytest.fixture
def hub(tmp_path, tiny_base):
    """(maintainer repo, bare remote path): a project created around the tiny base, pushed."""
    from modelgit.workflow import Project, create_project

    remote = str(tmp_path / "hub.git")
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", remote], check=True)
    repo = create_project(str(tmp_path / "maintainer"), tiny_base,
                          Project(name="tiny", base_model="example/tiny-llama"), remote=remote)
    return repo, remote


@pytest.fixture
def contributor(tmp_path, hub):
    """A function: clone the hub as WHO and return the clone (a GitRepo)."""
    from modelgit.git import setup

    def make(who: str):
        return setup.clone(hub[1], str(tmp_path / who))

    return make
