"""`modelgit train` and `modelgit eval` through the real CLI entry point."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json

import pytest

from modelgit.adapters import TrainConfig
from modelgit.cli import train_commands

cli_main = importlib.import_module("modelgit.cli.main")  # the package re-exports main() itself


@pytest.fixture
def run(monkeypatch):
    """``main(argv)`` with the train/eval verbs registered (whether or not cli/main.py has them)."""
    original = cli_main.build_parser

    def build_parser():
        parser = original()
        sub = parser._subparsers._group_actions[0]
        if "train" not in sub.choices:
            train_commands.register(sub, cli_main._command)
        return parser

    monkeypatch.setattr(cli_main, "build_parser", build_parser)
    return lambda *argv: cli_main.main(["--no-progress", *map(str, argv)])


def test_train_flags_are_derived_from_the_config():
    parser = argparse.ArgumentParser()
    train_commands.add_config_arguments(parser, TrainConfig)
    args = parser.parse_args(["base", "--data", "d.txt", "-o", "out", "--targets", "q_proj, k_proj",
                              "--rank", "4", "--full", "--task", "classification"])
    config = train_commands.config_from_args(TrainConfig, args)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    expected = {**defaults, "base": "base", "data": "d.txt", "output": "out", "rank": 4, "full": True,
                "target_modules": ("q_proj", "k_proj"), "task": "classification"}
    assert dataclasses.asdict(config) == expected
    with pytest.raises(SystemExit):
        parser.parse_args(["base", "--data", "d.txt", "-o", "o", "--task", "regression"])


def test_train_then_eval(run, lm_base, lm_data, tmp_path, capsys):
    out = tmp_path / "adapter"
    assert run("train", lm_base, "--data", lm_data, "-o", out, "--steps", 10, "--lr", 0.01,
               "--threads", 1) == 0
    printed = capsys.readouterr().out
    assert "trained a rank-8 LoRA of q_proj,v_proj (causal_lm) for 10 steps on 24 examples" in printed
    assert (out / "adapter_model.safetensors").exists()

    suites = tmp_path / "suites.yaml"
    suites.write_text(f"suites:\n  - {{name: own, data: {lm_data}, metric: perplexity}}\n")
    assert run("eval", lm_base, "--adapter", out, "--suites", suites) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["suite", "task", "metric"] and table[1].startswith("own")
    assert run("eval", lm_base, "--suites", suites, "--json") == 0
    base_ppl = json.loads(capsys.readouterr().out)[0]["value"]
    assert run("eval", lm_base, "--adapter", out, "--data", lm_data, "--json") == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["suite"] == "train.txt" and result["value"] < base_ppl


def test_train_json_output(run, lm_base, lm_data, tmp_path, capsys):
    assert run("train", lm_base, "--data", lm_data, "-o", tmp_path / "a", "--steps", 2, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"]["steps"] == 2 and report["data_card"]["records"] == 24


def test_errors_exit_2_with_a_message(run, lm_base, lm_data, tmp_path, capsys):
    assert run("train", lm_base, "--data", tmp_path / "missing.csv", "-o", tmp_path / "o") == 2
    assert "does not exist: check the path" in capsys.readouterr().err
    assert run("train", lm_base, "--data", lm_data, "-o", tmp_path / "o", "--targets", "nope") == 2
    assert "pass --targets with some of its linear layers" in capsys.readouterr().err
    assert run("eval", lm_base) == 2
    assert "give --suites FILE" in capsys.readouterr().err
    (tmp_path / "s.yaml").write_text("suites: [{name: a, data: x.txt, task: causal_lm}]\n")
    assert run("eval", lm_base, "--suites", tmp_path / "s.yaml", "--suite", "b") == 2
