"""Classification settings chosen from the data when left unset (issue 17)."""

from __future__ import annotations

import json

from modelgit.adapters import TrainConfig, train
from modelgit.adapters.defaults import (CAUSAL_LR, CLASSIFIER_LR, HEAD_LR, MAX_EPOCHS, MIN_EPOCHS,
                                        resolve)


def _config(**kw) -> TrainConfig:
    return TrainConfig(base=".", data="d", output="o", **kw)


def test_a_classifier_gets_its_own_rates_length_and_epochs():
    s = resolve(_config(), "classification", [10] * 95 + [40] * 5)
    assert (s.lr, s.head_lr) == (CLASSIFIER_LR, HEAD_LR)
    assert s.max_length == 16  # the 95th percentile (10 tokens), rounded up to 16
    assert s.holdout == 10 and s.steps is None
    assert MIN_EPOCHS <= s.epochs <= MAX_EPOCHS and s.epochs == 7  # ceil(150 / ceil(90 / 4))
    long = resolve(_config(max_length=64), "classification", [200] * 100)
    assert long.max_length == 64  # never above --max-length
    big = resolve(_config(), "classification", [10] * 10000)
    assert big.epochs == MIN_EPOCHS and big.holdout == 200


def test_what_the_user_sets_is_kept_and_a_causal_lm_is_unchanged():
    s = resolve(_config(lr=3e-4, head_lr=1e-2, steps=7, validation="v"), "classification", [10] * 100)
    assert (s.lr, s.head_lr, s.steps, s.epochs, s.holdout) == (3e-4, 1e-2, 7, None, 0)
    c = resolve(_config(), "causal_lm", [300] * 100)
    assert (c.lr, c.head_lr, c.max_length, c.steps, c.epochs, c.holdout) == (CAUSAL_LR, None, 256,
                                                                             None, None, 0)


def test_train_holds_out_a_slice_and_reports_its_accuracy_as_it_goes(cls_base, tmp_path):
    words = {"pos": "good great fine nice", "neg": "bad awful poor sad"}
    rows = [{"text": f"{words[label]} {i}", "label": label} for i in range(30) for label in words]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = train(TrainConfig(base=cls_base, data=str(data), output=str(tmp_path / "o"), threads=1,
                             task="classification"), progress=False)
    valid = done.metrics["validation"]
    assert valid["examples"] == 6 and valid["source"] == "6 examples held out of the data"
    assert valid["accuracy"] > valid["accuracy_before"]
    assert len(done.metrics["validation_curve"]) >= 5
    resolved = json.loads((tmp_path / "o" / "training_config.json").read_text())["resolved"]
    assert resolved["head_lr"] == HEAD_LR and resolved["holdout"] == 6
    assert done.metrics["examples"] == 54


def test_the_held_out_examples_are_named_by_the_seed():
    from modelgit.adapters.defaults import holdout_indices

    held = holdout_indices(100, 10, seed=0)
    assert len(set(held)) == 10 and held == sorted(held) and all(0 <= i < 100 for i in held)
    assert holdout_indices(100, 10, seed=0) == held and holdout_indices(100, 10, seed=1) != held


def test_a_classifier_reading_a_pooler_gets_it_adapted_unless_targets_are_given():
    import transformers

    from modelgit.adapters.targets import POOLER, resolve_targets

    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=20, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2))
    exclude = ("classifier",)
    assert resolve_targets(model, "bert", None, exclude, classifier=True) == ("query", "value", POOLER)
    assert resolve_targets(model, "bert", None, exclude) == ("query", "value")
    assert resolve_targets(model, "bert", ("query",), exclude, classifier=True) == ("query",)
    no_pooler = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=20, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2))
    no_pooler.bert.pooler = None
    assert resolve_targets(no_pooler, "bert", None, exclude, classifier=True) == ("query", "value")
