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


def test_train_json_reports_smoothed_and_validation_loss(run, lm_base, lm_data, tmp_path, capsys):
    """One batch's loss is noise: --json reports losses averaged over a window of steps, and the
    loss on --validation data before and after training."""
    assert run("train", lm_base, "--data", lm_data, "-o", tmp_path / "a", "--steps", 20, "--lr", 0.01,
               "--threads", 1, "--validation", lm_data, "--json") == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert m["loss_window"] == 2 and m["threads"] == 1
    assert m["start_loss"] == pytest.approx((m["loss_curve"][0] + m["loss_curve"][1]) / 2)
    assert m["final_loss"] < m["start_loss"]
    valid = m["validation"]
    assert valid["examples"] == 24 and valid["tokens"] > 24
    assert valid["loss"] < valid["loss_before"] and valid["perplexity"] < valid["perplexity_before"]
    assert run("train", lm_base, "--data", lm_data, "-o", tmp_path / "b", "--steps", 2,
               "--threads", 1, "--validation", lm_data) == 0
    assert "validation (24 examples): loss " in capsys.readouterr().out


def _bert_encoder(cls_base, path) -> str:
    """A bare BertModel directory (no head of any kind), with the tokenizer."""
    import shutil

    from transformers import AutoTokenizer, BertForSequenceClassification

    BertForSequenceClassification.from_pretrained(cls_base).bert.save_pretrained(path)
    AutoTokenizer.from_pretrained(cls_base).save_pretrained(path)
    shutil.rmtree(path / "README.md", ignore_errors=True)
    return str(path)


def test_train_refuses_a_task_the_architecture_cannot_do(run, cls_base, lm_data, cls_data, tmp_path,
                                                         capsys):
    encoder = _bert_encoder(cls_base, tmp_path / "bert")
    assert run("train", encoder, "--data", lm_data, "-o", tmp_path / "o", "--task", "causal_lm",
               "--steps", 2) == 2
    err = capsys.readouterr().err
    assert "(BertModel) cannot do task 'causal_lm': it can do: classification" in err
    assert not (tmp_path / "o").exists()
    assert run("train", cls_base, "--data", lm_data, "-o", tmp_path / "o", "--task", "causal_lm",
               "--steps", 2) == 2
    assert "(BertForSequenceClassification) cannot do task 'causal_lm'" in capsys.readouterr().err
    # the encoder can be trained as a classifier, and is by default
    assert run("train", encoder, "--data", cls_data, "-o", tmp_path / "c", "--steps", 2,
               "--threads", 1) == 0
    assert "(classification)" in capsys.readouterr().out


def test_fixed_labels_number_the_classes_whatever_the_data_holds(run, cls_base, tmp_path, capsys):
    """Two adapters trained on different subsets of the classes get the same numbering, so
    their heads have one shape and can be merged."""
    from modelgit.adapters.loading import read_labels

    def data(name, labels):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": f"{label} words here {i}", "label": label}) + "\n"
                                for i, label in enumerate(labels * 4)))
        return path

    names = "negative,neutral,positive"
    for name, labels in (("a", ["negative", "positive"]), ("b", ["neutral", "positive"])):
        assert run("train", cls_base, "--data", data(name, labels), "-o", tmp_path / name,
                   "--labels", names, "--steps", 2, "--threads", 1) == 0
        assert "classes: negative, neutral, positive" in capsys.readouterr().out
        assert read_labels(str(tmp_path / name)) == {0: "negative", 1: "neutral", 2: "positive"}
    from safetensors.torch import load_file

    heads = [{k: v.shape for k, v in load_file(str(tmp_path / n / "adapter_model.safetensors")).items()
              if "classifier" in k} for n in "ab"]
    assert heads[0] == heads[1] and any(shape[0] == 3 for shape in heads[0].values())
    assert run("train", cls_base, "--data", data("c", ["negative", "angry"]), "-o", tmp_path / "c",
               "--labels", names, "--steps", 2) == 2
    assert "1 label(s) of the data are not in the fixed list of 3 classes" in capsys.readouterr().err
    assert run("train", cls_base, "--data", data("d", ["negative"]), "-o", tmp_path / "d",
               "--labels", "negative,negative", "--steps", 2) == 2
    assert "labels repeats negative" in capsys.readouterr().err


def test_train_prints_progress_lines_when_stderr_is_not_a_terminal(lm_base, lm_data, tmp_path,
                                                                   monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("MODELGIT_PROGRESS", raising=False)
    monkeypatch.setenv("MODELGIT_PROGRESS_INTERVAL", "0")  # a line per step: no clock involved
    done = subprocess.run([sys.executable, "-m", "modelgit", "train", lm_base, "--data", lm_data,
                           "-o", str(tmp_path / "o"), "--steps", "3", "--threads", "1",
                           "--validation", lm_data], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [l for l in done.stderr.splitlines() if l.startswith("train: ")]
    assert [l.split(",")[0] for l in lines[:3]] == [f"train: step {i}/3 ({p}%)"
                                                    for i, p in ((1, 33), (2, 67), (3, 100))]
    assert "step/s" in lines[0] and "ETA" in lines[0] and ", loss " in lines[0]
    assert lines[-1].startswith("train: done, 3 step in ")
    quiet = subprocess.run([sys.executable, "-m", "modelgit", "--no-progress", "train", lm_base,
                            "--data", lm_data, "-o", str(tmp_path / "q"), "--steps", "3"],
                           capture_output=True, text=True)
    assert quiet.returncode == 0 and "train: " not in quiet.stderr


def test_save_every_keeps_checkpoints_that_equal_shorter_runs(run, lm_base, lm_data, tmp_path,
                                                              capsys):
    out = tmp_path / "runs" / "adapter"  # its parent created by the run, and kept
    assert run("train", lm_base, "--data", lm_data, "-o", out, "--steps", 5, "--lr", 0.01,
               "--threads", 1, "--save-every", 2, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"]["checkpoints"] == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == \
        ["checkpoint-2", "checkpoint-4"]
    assert [p.name for p in out.parent.iterdir()] == ["adapter"]  # no staging left
    assert run("train", lm_base, "--data", lm_data, "-o", tmp_path / "four", "--steps", 4,
               "--lr", 0.01, "--threads", 1) == 0
    for name in ("adapter_model.safetensors", "adapter_config.json"):  # constant lr, same order
        assert (out / "checkpoint-4" / name).read_bytes() == (tmp_path / "four" / name).read_bytes()
    assert (out / "checkpoint-2" / "adapter_model.safetensors").read_bytes() != \
        (out / "checkpoint-4" / "adapter_model.safetensors").read_bytes()
    suites = tmp_path / "suites.yaml"
    suites.write_text(f"suites:\n  - {{name: own, data: {lm_data}, metric: perplexity}}\n")
    assert run("eval", lm_base, "--adapter", out / "checkpoint-2", "--suites", suites) == 0
    capsys.readouterr()
    assert run("train", lm_base, "--data", lm_data, "-o", tmp_path / "more", "--steps", 4,
               "--lr", 0.01, "--threads", 1, "--save-every", 2, "--json",
               "--init-adapter", out / "checkpoint-2", "--skip-steps", 2) == 0
    report = json.loads(capsys.readouterr().out)  # steps 3-6: 4 kept, 6 is the output
    assert report["metrics"]["checkpoints"] == ["checkpoint-4"]
    assert (tmp_path / "more" / "checkpoint-4" / "adapter_model.safetensors").is_file()


def test_save_every_is_refused_when_it_cannot_apply(run, lm_base, lm_data, tmp_path, capsys):
    assert run("train", lm_base, "--data", lm_data, "-o", tmp_path / "a", "--steps", 2,
               "--save-every", 0) == 2
    assert "save_every is 0: it must be at least 1" in capsys.readouterr().err
    assert run("train", lm_base, "--data", lm_data, "-o", tmp_path / "b", "--steps", 2, "--full",
               "--save-every", 1) == 2
    assert "checkpoints are LoRA adapters" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_failed_run_leaves_neither_output_nor_checkpoints(run, lm_base, lm_data, tmp_path,
                                                           capsys, monkeypatch):
    from modelgit.adapters import training

    real = training.save_checkpoint
    calls = []

    def save_then_fail(*args):
        real(*args)
        calls.append(args[4])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(training, "save_checkpoint", save_then_fail)
    assert run("train", lm_base, "--data", lm_data, "-o", tmp_path / "new" / "dir" / "a",
               "--steps", 5, "--threads", 1, "--save-every", 1) != 0
    assert "No space left on device" in capsys.readouterr().err
    assert calls == [1, 2] and not list(tmp_path.iterdir())  # nor the parents it created
