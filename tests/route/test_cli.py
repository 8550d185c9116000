"""`modelgit route build / eval / which` through `python -m modelgit`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _main(*argv) -> int:
    """The CLI in this process (error cases: no interpreter start per case)."""
    from modelgit.cli.main import main

    return main(["--no-progress", *map(str, argv)])


def _modelgit(*argv, env=None, check=True):
    environment = {**os.environ, "MODELGIT_PROGRESS": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run([sys.executable, "-m", "modelgit", *map(str, argv)], env=environment,
                            capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(f"exit {result.returncode}: {result.stderr}")
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory, domains):
    root = tmp_path_factory.mktemp("cli")
    common = ["--base", domains["base"], "--adapter", f"animals={domains['animals']}",
              "--adapter", f"code={domains['code']}"]
    _modelgit("route", "build", "--kind", "examples", *common,
              "--examples", f"animals={domains['files']['animals']}",
              "--examples", f"code={domains['files']['code']}", "-o", root / "ex")
    _modelgit("route", "build", "--kind", "arrow", *common, "--layers", "2", "-o", root / "arrow")
    suites = root / "suites.yaml"
    suites.write_text("suites:\n" + "".join(
        f"  - {{name: {n}, data: {domains['files'][n]}, metric: perplexity}}\n"
        for n in ("animals", "code", "shop")))
    scores = root / "scores.json"
    scores.write_text(json.dumps({
        "animals": {"animals": {"base": 9, "adapter": 5}, "code": {"base": 9, "adapter": 9.5}},
        "code": {"animals": {"base": 9, "adapter": 9.9}, "code": {"base": 9, "adapter": 4}}}))
    _modelgit("route", "build", "--kind", "reviews", *common, "--suites", suites, "--suite",
              "animals", "--suite", "code", "--scores", scores, "--embedder", "base:0",
              "-o", root / "rev")
    return {"root": root, "suites": suites, "common": common}


def test_build_writes_router_files(built):
    for name in ("ex", "arrow", "rev"):
        files = sorted(os.listdir(built["root"] / name))
        assert files == ["library.json", "router.json", "router.safetensors"]
    spec = json.loads((built["root"] / "rev" / "router.json").read_text())
    assert spec["kind"] == "reviews"
    assert spec["classes"] == [{"name": "animals", "target": "animals"},
                               {"name": "code", "target": "code"}]


def test_which_shows_each_inputs_adapter(built, tmp_path):
    out = _modelgit("route", "which", built["root"] / "arrow", "the cat sat on the mat",
                    "def add ( x , y ) : return x + y").stdout.splitlines()
    assert out[0].split()[0] == "animals" and out[1].split()[0] == "code"
    assert out[0].endswith("the cat sat on the mat")
    texts = tmp_path / "inputs.txt"
    texts.write_text("for i in range ( 10 )\n")
    data = json.loads(_modelgit("route", "which", built["root"] / "ex", "--file", texts,
                                "--json").stdout)
    assert data[0]["adapter"] == "code" and data[0]["weights"] == {"code": 1.0}


def test_which_threshold_override(built, capsys):
    assert _main("route", "which", "--json", "--threshold", "5", built["root"] / "ex", "for i") == 0
    assert json.loads(capsys.readouterr().out)[0]["adapter"] == "base"


def test_eval_prints_the_table(built):
    out = _modelgit("route", "eval", built["root"] / "ex", built["root"] / "rev", "--suites",
                    built["suites"], "--mode", "hard", "--cost-samples", "1").stdout
    lines = out.splitlines()
    assert lines[0].startswith("model") and "shop (perplexity ↓)" in lines[0]
    labels = [line.split("  ")[0].strip() for line in lines[1:-1]]
    assert labels == ["base", "adapter animals", "adapter code", "oracle", "router ex hard",
                      "router rev hard"]
    report = json.loads(_modelgit("route", "eval", built["root"] / "ex", "--suites",
                                  built["suites"], "--suite", "code", "--mode", "soft",
                                  "--cost-samples", "0", "--json").stdout)
    assert [s["suite"] for s in report["suites"]] == ["code"] and report["cost"] == {}
    assert report["suites"][0]["routing_accuracy"]["router ex soft"] == 1.0


def test_progress_lines_when_stderr_is_no_terminal(built):
    result = _modelgit("route", "eval", built["root"] / "arrow", "--suites", built["suites"],
                       "--suite", "code", "--mode", "hard", "--cost-samples", "0",
                       env={"MODELGIT_PROGRESS": "lines", "MODELGIT_PROGRESS_INTERVAL": "0"})
    lines = result.stderr.splitlines()
    assert lines[0].startswith("route eval: step 1/4 (25%)") and "code: base" in lines[0]
    assert lines[-1].startswith("route eval: done, 4 step")


@pytest.mark.parametrize("argv, message", [
    (["--kind", "examples", "--examples", "animals=X", "--examples", "cod=Y"], "did you mean 'code'"),
    (["--kind", "examples"], "needs example texts"),
    (["--kind", "reviews"], "needs --suites"),
    (["--kind", "arrow", "--threshold", "high"], "give a number, auto or none"),
    (["--kind", "arrow", "--embedder", "base:2", "--layers", "9"], "the base has 2 layers"),
])
def test_build_errors_are_messages_not_tracebacks(tmp_path, built, argv, message, capsys):
    for name in ("X", "Y"):
        (tmp_path / f"{name}.txt").write_text("some text\nmore text\n")
    argv = [a.replace("=X", f"={tmp_path}/X.txt").replace("=Y", f"={tmp_path}/Y.txt") for a in argv]
    assert _main("route", "build", *built["common"], *argv, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_adapter_of_another_base_is_refused_by_build(tmp_path, built, domains, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(domains["code"], other)
    config = json.loads((other / "training_config.json").read_text())
    config["resolved"]["base_fingerprint"] = "12" * 32
    (other / "training_config.json").write_text(json.dumps(config))
    assert _main("route", "build", "--kind", "arrow", "--base", domains["base"],
                 "--adapter", f"animals={domains['animals']}", "--adapter", f"code={other}",
                 "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "trained on another base" in err and "modelgit rebase" in err


def test_loading_a_router_whose_library_lost_an_adapter_is_refused(tmp_path, built, capsys):
    import shutil

    copy = tmp_path / "ex"
    shutil.copytree(built["root"] / "ex", copy)
    record = json.loads((copy / "library.json").read_text())
    record["adapters"] = record["adapters"][:1]
    (copy / "library.json").write_text(json.dumps(record))
    assert _main("route", "which", copy, "the cat") == 2
    assert "names adapter(s) code that the library lacks" in capsys.readouterr().err
    (copy / "router.json").write_text('{"format": "modelgit-router", "format_version": 7}')
    assert _main("route", "which", copy, "the cat") == 1
    assert "upgrade modelgit" in capsys.readouterr().err


def test_build_a_linear_probe_router(tmp_path, built, domains):
    out = tmp_path / "linear"
    assert _main("route", "build", "--kind", "examples", *built["common"], "--method", "linear",
                 "--examples", f"animals={domains['files']['animals']}",
                 "--examples", f"code={domains['files']['code']}", "-o", out) == 0
    spec = json.loads((out / "router.json").read_text())
    assert spec["settings"]["method"] == "linear" and spec["settings"]["l2"] == 1.0
    assert spec["temperature"] == 1.0
