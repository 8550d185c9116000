"""`modelgit diff`, `git diff` and `modelgit log` show the same relative L2 figures, each labelled
with its scale (file, layer, tensor); `log` says how a release was made."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from safetensors.numpy import save_file

from gitutil import git, modelgit
from helpers import float_weights


@pytest.fixture
def changed(repo):
    base = {"layers.0.a": float_weights(1, (64, 64)), "layers.0.b": float_weights(2, (64, 64)),
            "layers.1.a": float_weights(3, (64, 64)), "norm": float_weights(4, (64,))}
    save_file(base, str(repo / "model.safetensors"))
    git(repo, "add", "model.safetensors")
    git(repo, "commit", "-qm", "v1")
    new = dict(base, **{"layers.0.a": base["layers.0.a"] * np.float32(1.5)})
    save_file(new, str(repo / "model.safetensors"))
    git(repo, "commit", "-qam", "v2")
    # the figures by their definitions, in float64
    delta = float(np.sum((new["layers.0.a"].astype(np.float64) - base["layers.0.a"]) ** 2))
    norms = {k: float(np.sum(v.astype(np.float64) ** 2)) for k, v in base.items()}
    return repo, {"tensor": math.sqrt(delta / norms["layers.0.a"]),
                  "layer": math.sqrt(delta / (norms["layers.0.a"] + norms["layers.0.b"])),
                  "file": math.sqrt(delta / sum(norms.values()))}


def _figure(text: str, label: str) -> float:
    return float(re.search(re.escape(label) + r" ([0-9.e+-]+)", text).group(1))


def test_one_definition_labelled_everywhere(changed):
    repo, expected = changed
    ours = modelgit(repo, "diff", "HEAD~1", "HEAD").stdout
    theirs = git(repo, "diff", "HEAD~1", "HEAD").stdout
    log = modelgit(repo, "log", "-n", "1").stdout
    for text in (ours, theirs, log):
        assert _figure(text, "file-wide rel.L2") == pytest.approx(expected["file"], rel=1e-3)
    for text in (ours, theirs):
        assert "layer rel.L2" in text and "tensor rel.L2" in text
        row = next(line for line in text.splitlines() if line.strip().startswith("layers.0 "))
        assert float(row.split()[-1]) == pytest.approx(expected["layer"], rel=1e-3)
        row = next(line for line in text.splitlines() if line.strip().startswith("layers.0.a "))
        assert float(row.split()[2]) == pytest.approx(expected["tensor"], rel=1e-3)
    (data,) = json.loads(modelgit(repo, "diff", "HEAD~1", "HEAD", "--json").stdout)
    assert data["rel_l2"] == pytest.approx(expected["file"], rel=1e-6)
    assert data["layers"][0]["rel_l2"] == pytest.approx(expected["layer"], rel=1e-6)
    assert data["tensors"][0]["rel_l2"] == pytest.approx(expected["tensor"], rel=1e-6)


def _release_commit(repo, tag, record, message_extra=""):
    (repo / "releases").mkdir(exist_ok=True)
    (repo / "releases" / f"{tag}.json").write_text(json.dumps(record))
    tensors = {"w": float_weights(int(tag[1:]), (16, 16))}
    save_file(tensors, str(repo / "model.safetensors"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", f"Release {tag}\n\nModelgit-Release: {tag}\n{message_extra}")


def test_log_says_how_a_release_was_made(repo):
    _release_commit(repo, "v1", {"tag": "v1", "method": None, "contributions": []})
    _release_commit(repo, "v2", {"tag": "v2", "method": "ties", "parameters": {"density": 0.5},
                                 "contributions": [{"name": "a"}, {"name": "b"}]},
                    "Modelgit-Recipe: None\n")
    log = modelgit(repo, "log").stdout
    assert "None" not in log
    assert 'recipe: ties {"density": 0.5} of 2 contribution(s) (release v2: releases/v2.json)' in log
    assert "recipe: none: release v1 is the base model (releases/v1.json)" in log
    entries = json.loads(modelgit(repo, "log", "--json").stdout)
    assert entries[0]["recipe"].startswith("ties")
