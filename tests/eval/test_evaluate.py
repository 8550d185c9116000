"""Suites run on a base alone and with an adapter: a trained adapter must score better."""

from __future__ import annotations

import pytest

from modelgit.adapters import TrainConfig, train
from modelgit.errors import UsageError
from modelgit.eval import SuiteConfig, evaluate_suite, evaluate_suites, format_table


@pytest.fixture(scope="module")
def lm_adapter(lm_base, lm_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "lm"
    train(TrainConfig(base=lm_base, data=lm_data, output=str(out), steps=30, lr=1e-2, seed=0, threads=1))
    return str(out)


def test_the_adapter_lowers_perplexity_on_its_training_text(lm_base, lm_adapter, lm_data):
    suite = SuiteConfig(name="train-text", data=lm_data, task="causal_lm", metric="perplexity")
    before = evaluate_suite(lm_base, None, suite)
    after = evaluate_suite(lm_base, lm_adapter, suite)
    assert after["value"] < before["value"] * 0.9
    assert before["metrics"]["tokens"] == after["metrics"]["tokens"] > 0
    assert after["examples"] == 24 and after["adapter"] == lm_adapter and not after["higher_is_better"]
    assert len(after["data"]["sha256"]) == 64 and set(after["data"]) == {"sha256", "bytes", "records"}


def test_classification_suite_with_string_labels(cls_base, cls_data, tmp_path):
    out = tmp_path / "cls"
    train(TrainConfig(base=cls_base, data=cls_data, output=str(out), steps=30, lr=2e-2, batch_size=8,
                      threads=1))
    suites = [SuiteConfig(name="acc", data=cls_data, task="classification", metric="accuracy"),
              SuiteConfig(name="f1", data=cls_data, task="classification", metric="macro_f1",
                          max_examples=6)]
    results = evaluate_suites(cls_base, str(out), suites)
    assert [r["value"] for r in results] == [1.0, 1.0]
    assert results[1]["examples"] == 6 and results[1]["metrics"]["n"] == 6
    table = format_table(results)
    assert table.splitlines()[0].split() == ["suite", "task", "metric", "value", "95%", "interval",
                                             "examples", "other"]
    assert "macro_f1 ↑" in table and "1.0000" in table


def test_labels_the_model_does_not_know(cls_base, tmp_path):
    (tmp_path / "d.csv").write_text("text,label\ngood,maybe\n")
    suite = SuiteConfig(name="x", data=str(tmp_path / "d.csv"), task="classification", metric="accuracy")
    with pytest.raises(UsageError, match="label\\(s\\) the model has no class for") as info:
        evaluate_suite(cls_base, None, suite)
    assert "maybe" not in str(info.value)


def test_an_adapter_for_another_base_is_refused(cls_base, lm_adapter, lm_data):
    suite = SuiteConfig(name="x", data=lm_data, task="causal_lm", metric="perplexity")
    with pytest.raises(UsageError):
        evaluate_suite(cls_base, lm_adapter, suite)


def test_results_carry_a_bootstrap_interval_over_the_documents(lm_base, lm_adapter, lm_data):
    suite = SuiteConfig(name="t", data=lm_data, task="causal_lm", metric="perplexity")
    first = evaluate_suite(lm_base, lm_adapter, suite)
    low, high = first["interval"]
    assert low < first["value"] < high and first["confidence"] == 0.95
    assert len(first["documents"]["nll"]) == len(first["documents"]["tokens"]) == 24
    assert sum(first["documents"]["tokens"]) == first["metrics"]["tokens"]
    again = evaluate_suite(lm_base, lm_adapter, suite)  # seeded: the same interval every time
    assert again["interval"] == first["interval"]
    wider = evaluate_suite(lm_base, lm_adapter, suite, confidence=0.99)["interval"]
    assert wider[0] <= low and wider[1] >= high
