"""``modelgit merge --derived``: the output of a merge of LoRA adapters into their base, added to
a repository, costs the adapters' factors and recipes (derived objects), not deltas."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from gitutil import git

from modelgit.git.repo import find_repo
from modelgit.manifest import Manifest
from modelgit.merge.lora import save_adapter
from modelgit.store.derived import DERIVED

Q = "model.layers.0.self_attn.q_proj"


@pytest.fixture
def base_and_adapters(repo, tmp_path):
    g = torch.Generator().manual_seed(3)
    (repo / "base").mkdir()
    save_file({f"{Q}.weight": torch.randn(48, 32, generator=g), "model.norm.weight": torch.randn(32, generator=g)},
              str(repo / "base" / "model.safetensors"))
    git(repo, "add", "base")
    git(repo, "commit", "-qm", "base")
    adapters = []
    for i in range(2):
        save_adapter(str(tmp_path / f"ad{i}"), {Q: (torch.randn(48, 2, generator=g),
                                                    torch.randn(2, 32, generator=g))}, 2, 4.0)
        adapters.append(str(tmp_path / f"ad{i}"))
    return repo, adapters


@pytest.mark.parametrize("method, extra", [("linear", []), ("dare_ties", ["--base", "base", "--density", "0.5"])])
def test_merge_derived_stores_recipes_and_the_checkout_is_byte_exact(
        base_and_adapters, monkeypatch, capsys, method, extra):
    from modelgit.cli.main import main

    repo, adapters = base_and_adapters
    monkeypatch.chdir(repo)
    args = ["merge", "--method", method, *extra, *[a for ad in adapters for a in ("--model", f"base+{ad}")],
            "-o", "merged", "--derived", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["derived"]["tensors"] == 1 and summary["derived"]["fallback"] == 0
    assert not os.path.exists(repo / "merged" / "derived-plan.json")
    store = find_repo(str(repo)).store()
    before = set(store.iter_objects())
    git(repo, "add", "merged")
    git(repo, "commit", "-qm", "merged")
    (weights,) = glob.glob(str(repo / "merged" / "*.safetensors"))
    rel = os.path.relpath(weights, repo)
    manifest = Manifest.loads(find_repo(str(repo)).git("show", f"HEAD:{rel}"), rel)
    q = next(t for t in manifest.files[0].tensors if t.name == f"{Q}.weight")
    assert all(store.header(oid).encoding is DERIVED for oid in q.chunks)
    assert not any(store.header(o).encoding.name.startswith("delta")
                   for o in set(store.iter_objects()) - before)
    installed = open(weights, "rb").read()
    os.remove(weights)
    store.drop_derived_cache()
    git(repo, "checkout", "--", rel)  # computed from the recipes
    assert open(weights, "rb").read() == installed


def test_merge_derived_outside_a_repository_is_refused_before_merging(tmp_path, monkeypatch, capsys):
    from modelgit.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["merge", "--method", "linear", "--model", "x+y", "-o", "out", "--derived"]) == 2
    assert "not inside a git repository" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")
