"""A model repository around a tiny Llama, three tiny text domains as three clients, suites."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

pytest.importorskip("flwr")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from gitutil import git_env  # noqa: E402,F401  (autouse: private HOME and git identity)
from model_fixtures import one_thread  # noqa: E402,F401  (autouse)
from workflow_helpers import DOMAINS  # noqa: E402


def _jsonl(path, texts) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    from modelgit.adapters.tiny import tiny_causal_lm

    words = [t for texts in DOMAINS.values() for t in texts]
    return tiny_causal_lm(tmp_path_factory.mktemp("base") / "base", words, seed=0)


@pytest.fixture(scope="session")
def client_data(tmp_path_factory):
    """{domain: training data path}: one domain per client (non-IID)."""
    root = tmp_path_factory.mktemp("clients")
    return {name: _jsonl(root / f"{name}.jsonl", texts * 4) for name, texts in DOMAINS.items()}


@pytest.fixture
def suites_file(tmp_path):
    import yaml

    root = tmp_path / "private"
    root.mkdir()
    suites = [{"name": n, "data": _jsonl(root / f"{n}-heldout.jsonl", t[::2]),
               "metric": "perplexity"} for n, t in DOMAINS.items()]
    path = root / "suites.yaml"
    path.write_text(yaml.safe_dump({"suites": suites}))
    return str(path)


@pytest.fixture
def model_repo(tmp_path, tiny_base):
    """The maintainer's repository (a GitRepo) around the tiny base."""
    from modelgit.workflow import Project, create_project

    remote = str(tmp_path / "hub.git")
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", remote], check=True)
    return create_project(str(tmp_path / "maintainer"), tiny_base,
                          Project(name="tiny", base_model="example/tiny-llama"), remote=remote)


SETTINGS = {"rank": 4, "alpha": 8.0, "steps": 4, "lr": 2e-2, "batch_size": 4, "threads": 1,
            "min_clients": 2}
