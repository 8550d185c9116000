"""The linear probe `train` reports beside a classifier: scikit-learn's default logistic
regression (multinomial, L2 with C=1 on the weights), fitted on the starting model's embeddings."""

from __future__ import annotations

import json

import pytest
import torch

from modelgit.adapters import TrainConfig, train
from modelgit.adapters.probe import fit_probe, mean_pooled
from modelgit.cli.main import main


def test_the_fit_is_the_optimum_of_the_penalised_likelihood():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(60, generator=g, dtype=torch.float64) > 0).long() \
        + (x[:, 1] > 1).long()  # three overlapping classes
    weight, bias = fit_probe(x, y.tolist(), 3)
    w, b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x @ w.T + b, y, reduction="sum") + (w ** 2).sum() / 2
    loss.backward()
    # the gradient vanishes at the optimum: sum_i (p_i - y_i) x_i + W = 0, sum_i (p_i - y_i) = 0
    assert w.grad.abs().max() < 1e-6 and b.grad.abs().max() < 1e-6
    assert weight.norm() > 0.1  # not the starting zeros
    assert fit_probe(x, y.tolist(), 3)[0].equal(weight)  # deterministic


def test_mean_pooling_ignores_padding_and_restores_the_mode(cls_base):
    from modelgit.adapters import load_model

    model = load_model(cls_base, "classification", {0: "neg", 1: "pos"})
    model.train()
    short, long = [4, 7, 8], [4, 7, 8, 9, 10, 11]
    alone = mean_pooled(model, [short], 0, 8)
    padded = mean_pooled(model, [short, long], 0, 8)  # short is padded to 6 tokens here
    assert model.training
    torch.testing.assert_close(padded[0], alone[0])


@pytest.fixture
def held_out_data(tmp_path):
    words = {"pos": "good great fine nice", "neg": "bad awful poor sad"}
    rows = [{"text": f"{words[label]} {i}", "label": label} for i in range(30) for label in words]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(data)


def test_train_reports_the_probe_beside_the_trained_model(cls_base, held_out_data, tmp_path, capsys,
                                                           monkeypatch):
    assert main(["--no-progress", "train", cls_base, "--data", held_out_data, "-o", str(tmp_path / "o"),
                 "--threads", "1", "--task", "classification"]) == 0
    out = capsys.readouterr().out
    assert "a linear probe on the starting model's mean-pooled embeddings (54 training examples): " \
           "accuracy " in out and "the trained model is " in out
    valid = json.loads((tmp_path / "o" / "metrics.json").read_text())["validation"]
    assert valid["probe"]["examples"] == 54 and 0.0 <= valid["probe"]["accuracy"] <= 1.0
    # the probe draws no random numbers: the adapter is the one a run without it trains
    from modelgit.adapters import training

    monkeypatch.setattr(training, "probe_accuracy", lambda *args: None)
    plain = train(TrainConfig(base=cls_base, data=held_out_data, output=str(tmp_path / "p"),
                              threads=1, task="classification"), progress=False)
    assert "probe" not in plain.metrics["validation"]
    assert (tmp_path / "o" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "p" / "adapter_model.safetensors").read_bytes()


def test_no_probe_without_held_out_data_or_for_a_causal_lm(lm_base, lm_data, cls_base, tmp_path):
    small = tmp_path / "small.jsonl"  # under 50 examples: nothing held out
    small.write_text("".join(json.dumps({"text": f"good {i}" if i % 2 else f"bad {i}",
                                         "label": "pos" if i % 2 else "neg"}) + "\n" for i in range(10)))
    done = train(TrainConfig(base=cls_base, data=str(small), output=str(tmp_path / "c"), steps=2,
                             threads=1, task="classification"), progress=False)
    assert "validation" not in done.metrics
    lm = train(TrainConfig(base=lm_base, data=lm_data, output=str(tmp_path / "l"), steps=2, threads=1,
                           validation=lm_data), progress=False)
    assert "probe" not in lm.metrics["validation"]


def test_the_probe_shows_progress_in_a_log(cls_base, held_out_data, tmp_path, capsys, monkeypatch):
    """Its forward passes (up to 2,048 training examples) run before training's own bar."""
    monkeypatch.setenv("MODELGIT_PROGRESS", "lines")
    monkeypatch.setenv("MODELGIT_PROGRESS_INTERVAL", "0")  # a line at every batch
    train(TrainConfig(base=cls_base, data=held_out_data, output=str(tmp_path / "o"), steps=2,
                      threads=1, task="classification"), progress=None)  # not a terminal: lines
    err = capsys.readouterr().err
    assert "linear probe: batch 16/16 (100%)" in err  # 54 + 6 examples in batches of 4
