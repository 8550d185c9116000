"""The probe classifier (issue 17): logistic regression on a BERT encoder's mean-pooled
embeddings, written as a PEFT adapter whose labels.json says ``"pooling": "mean"``; loaded, merged
and served as a stock ``BertForSequenceClassification`` with one constant layer more."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from modelgit.adapters import TrainConfig, train
from modelgit.adapters.loading import load_model, load_tokenizer, read_pooling, shared_pooling
from modelgit.adapters.pooling import POOLER_SCALE, pooled_features
from modelgit.cli.main import main
from modelgit.errors import FormatError, UsageError

WORDS = {"pos": "good great fine nice", "neg": "bad awful poor sad"}


@pytest.fixture(scope="module")
def held_out_data(tmp_path_factory):
    """60 examples: `train` holds 6 out and reports on them."""
    rows = [{"text": f"{WORDS[label]} {i}", "label": label} for i in range(30) for label in WORDS]
    path = tmp_path_factory.mktemp("probe-data") / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def probe_adapter(bert_encoder, held_out_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "p"
    return train(TrainConfig(base=bert_encoder, data=held_out_data, output=str(out), threads=1,
                             task="classification", classifier="probe"), progress=False)


def _batch(tokenizer, texts):
    return tokenizer(texts, return_tensors="pt", padding=True)


def test_the_constant_layer_makes_the_first_token_the_layer_normalised_mean(bert_encoder):
    model = load_model(bert_encoder, "classification", {0: "neg", 1: "pos"}, pooling="mean")
    tokenizer = load_tokenizer(bert_encoder)
    texts = ["good", "bad awful poor sad great nice"]  # the first is padded in the batch
    raw, pooled = pooled_features(model, _batch(tokenizer, texts))
    expected = torch.nn.functional.layer_norm(raw, (raw.shape[-1],), eps=1e-12)
    recovered = torch.atanh(pooled) / POOLER_SCALE
    # the token's own state weighs 1/1000 against the mean: a near-perfect match
    assert torch.nn.functional.cosine_similarity(recovered, expected).min() > 0.999
    alone_raw, alone = pooled_features(model, _batch(tokenizer, texts[:1]))
    torch.testing.assert_close(alone, pooled[:1], rtol=0, atol=1e-6)  # padding does not count
    torch.testing.assert_close(alone_raw, raw[:1], rtol=0, atol=1e-6)
    assert model.config.num_hidden_layers == 3  # the encoder's 2 and the constant one


def test_classifier_probe_writes_a_mean_pooled_adapter_with_no_training(probe_adapter, bert_encoder):
    from safetensors.torch import load_file

    out = probe_adapter.output
    assert read_pooling(out) == "mean"
    assert json.loads(open(f"{out}/labels.json").read())["pooling"] == "mean"
    metrics = probe_adapter.metrics
    assert metrics["steps"] == 0 and metrics["validation"]["probe"]["pooling"] == "mean"
    config = json.loads(open(f"{out}/training_config.json").read())
    assert config["resolved"]["classifier"] == "probe" and config["resolved"]["steps"] == 0
    tensors = load_file(f"{out}/adapter_model.safetensors")
    lora = [t for name, t in tensors.items() if "lora_" in name]
    assert lora and all(not t.any() for t in lora)  # the body is the base's
    assert not any(".layer.2." in name for name in tensors)  # no LoRA in the constant layer
    # loaded by name alone, it separates the training texts
    model = load_model(bert_encoder, "classification", adapter_dir=out)
    tokenizer = load_tokenizer(bert_encoder)
    with torch.no_grad():
        logits = model(**_batch(tokenizer, [f"{WORDS['pos']} 3", f"{WORDS['neg']} 4"])).logits
    labels = json.loads(open(f"{out}/labels.json").read())["id2label"]
    assert [labels[str(int(i))] for i in logits.argmax(-1)] == ["pos", "neg"]


def test_the_cli_says_what_it_fitted(bert_encoder, held_out_data, tmp_path, capsys):
    assert main(["--no-progress", "train", bert_encoder, "--data", held_out_data, "-o",
                 str(tmp_path / "o"), "--threads", "1", "--classifier", "probe"]) == 0
    out = capsys.readouterr().out
    assert "fitted a linear probe classifier on 60 examples" in out  # 54, then refitted on all
    assert "the probe classifier's accuracy" in out and "before the refit" in out
    valid = json.loads((tmp_path / "o" / "metrics.json").read_text())["validation"]
    assert "tuned" not in valid  # nothing was tuned


def test_auto_keeps_the_probe_unless_the_tuned_model_is_ahead_by_more_than_chance():
    from modelgit.adapters.training import _ahead

    same = [True] * 20 + [False] * 4
    assert not _ahead(same, same)
    one_more = [True] * 21 + [False] * 3
    assert not _ahead(one_more, same)  # 1 example of 24: luck
    assert _ahead([True] * 24, [True] * 14 + [False] * 10)  # 10 to 0
    assert not _ahead([True] * 14 + [False] * 10, [True] * 24)


def test_auto_compares_both_on_held_out_data_and_records_them(bert_encoder, held_out_data, tmp_path,
                                                              capsys):
    assert main(["--no-progress", "train", bert_encoder, "--data", held_out_data, "-o",
                 str(tmp_path / "o"), "--threads", "1", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    valid = json.loads((tmp_path / "o" / "metrics.json").read_text())["validation"]
    kept = json.loads((tmp_path / "o" / "training_config.json").read_text())["resolved"]["classifier"]
    assert valid["probe"]["pooling"] == "mean" and 0 <= valid["probe"]["accuracy"] <= 1
    assert kept == "probe"  # two steps leave the tuned head near chance: it is not ahead
    assert "tuned" in valid and valid["accuracy"] == valid["probe"]["accuracy"]
    assert valid["tuned"]["accuracy"] <= valid["probe"]["accuracy"]
    assert read_pooling(str(tmp_path / "o")) == "mean"
    assert "wrote the probe classifier" in out
    assert valid["probe"]["refitted_examples"] == 60  # chosen: refitted on every example


def test_tuned_writes_the_first_token_classifier(bert_encoder, held_out_data, tmp_path):
    done = train(TrainConfig(base=bert_encoder, data=held_out_data, output=str(tmp_path / "t"),
                             steps=2, threads=1, classifier="tuned"), progress=False)
    assert read_pooling(done.output) == "cls"
    assert "pooling" not in done.metrics["validation"]["probe"]  # the report on the raw mean only
    config = json.loads(open(f"{done.output}/training_config.json").read())
    assert config["resolved"]["classifier"] == "tuned"


def test_probe_classifiers_merge_into_a_stock_bert_classifier(bert_encoder, probe_adapter,
                                                              held_out_data, tmp_path):
    from transformers import AutoModelForSequenceClassification

    other = train(TrainConfig(base=bert_encoder, data=held_out_data, output=str(tmp_path / "q"),
                              threads=1, classifier="probe", max_examples=40), progress=False)
    tokenizer = load_tokenizer(bert_encoder)
    batch = _batch(tokenizer, ["good great 7", "sad poor 9 awful", "fine"])
    for models, name in (([probe_adapter.output], "one"), ([probe_adapter.output, other.output], "two")):
        out = tmp_path / name
        argv = ["--no-progress", "merge", "--method", "ties", "--density", "0.5", "--base", bert_encoder,
                "-o", str(out)]
        for adapter in models:
            argv += ["--model", f"{bert_encoder}+{adapter}"]
        assert main(argv) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["num_hidden_layers"] == 3 and config["architectures"] == ["BertForSequenceClassification"]
        merged, info = AutoModelForSequenceClassification.from_pretrained(str(out), output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        with torch.no_grad():
            got = merged.eval()(**batch).logits
        if name == "one":  # transformers alone computes what modelgit's loading of the adapter does
            with torch.no_grad():
                want = load_model(bert_encoder, "classification", adapter_dir=models[0])(**batch).logits
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        else:  # the heads averaged, the constant layer kept
            heads = [load_model(bert_encoder, "classification", adapter_dir=m) for m in models]
            with torch.no_grad():
                mean = sum(h(**batch).logits for h in heads) / 2  # linear in the head: the mean
            torch.testing.assert_close(got, mean, rtol=1e-4, atol=1e-4)


def test_a_merge_of_first_token_and_mean_pooled_classifiers_is_refused(bert_encoder, probe_adapter,
                                                                        held_out_data, tmp_path, capsys):
    tuned = train(TrainConfig(base=bert_encoder, data=held_out_data, output=str(tmp_path / "t"),
                              steps=2, threads=1, classifier="tuned"), progress=False)
    code = main(["--no-progress", "merge", "--method", "linear", "--base", bert_encoder, "-o",
                 str(tmp_path / "m"), "--model", f"{bert_encoder}+{probe_adapter.output}",
                 "--model", f"{bert_encoder}+{tuned.output}"])
    err = capsys.readouterr().err
    assert code != 0 and "read the encoder differently" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()
    with pytest.raises(UsageError, match="read the encoder differently"):
        shared_pooling({"p": probe_adapter.output, "t": tuned.output})
    assert shared_pooling({"p": probe_adapter.output}) == "mean"


def test_continuing_a_probe_classifier_tunes_through_the_mean(bert_encoder, probe_adapter,
                                                              held_out_data, tmp_path):
    done = train(TrainConfig(base=bert_encoder, data=held_out_data, output=str(tmp_path / "c"),
                             steps=3, threads=1, init_adapter=probe_adapter.output), progress=False)
    assert read_pooling(done.output) == "mean" and done.metrics["steps"] == 3
    assert done.metrics["final_loss"] == done.metrics["final_loss"]  # finite, not NaN


@pytest.mark.parametrize("pooling", ["max", ["mean"], {"kind": "mean"}, 1, None])
def test_a_hostile_pooling_in_labels_json_is_refused_with_a_message(bert_encoder, probe_adapter, tmp_path,
                                                                     pooling, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(probe_adapter.output, bad)
    labels = json.loads((bad / "labels.json").read_text())
    labels["pooling"] = pooling
    (bad / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(FormatError, match="pooling"):
        read_pooling(str(bad))
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"text": "good", "label": "pos"}) + "\n")
    code = main(["--no-progress", "eval", bert_encoder, "--adapter", str(bad), "--data", str(data)])
    err = capsys.readouterr().err
    assert code != 0 and "pooling" in err and "Traceback" not in err


def test_probe_needs_a_bare_bert_encoder(cls_base, lm_base, lm_data, held_out_data, tmp_path, capsys):
    code = main(["--no-progress", "train", cls_base, "--data", held_out_data, "-o", str(tmp_path / "a"),
                 "--classifier", "probe"])
    err = capsys.readouterr().err
    assert code != 0 and "sequence classifier already" in err and "--classifier tuned" in err
    code = main(["--no-progress", "train", lm_base, "--data", held_out_data, "-o", str(tmp_path / "b"),
                 "--classifier", "probe", "--task", "classification"])
    err = capsys.readouterr().err
    assert code != 0 and "BERT encoders" in err and "Traceback" not in err
    with pytest.raises(UsageError, match="classifier probe"):
        TrainConfig(base=lm_base, data=lm_data, output=str(tmp_path / "c"), task="causal_lm",
                    classifier="probe").validate()
    for bad in ("best", ["probe"], None):  # from the Python API or a YAML file
        with pytest.raises(UsageError, match="is not one of auto, tuned, probe"):
            TrainConfig(base=lm_base, data=lm_data, output=str(tmp_path / "c"),
                        classifier=bad).validate()


def test_a_router_serves_probe_classifiers_and_refuses_a_mixed_library(bert_encoder, probe_adapter,
                                                                       held_out_data, tmp_path):
    from modelgit.route import BuildRequest, Library, RoutedModel, build_router

    other = train(TrainConfig(base=bert_encoder, data=held_out_data, output=str(tmp_path / "q"),
                              threads=1, classifier="probe", max_examples=40), progress=False)
    adapters = {"a": probe_adapter.output, "b": other.output}
    library = Library.from_dirs(bert_encoder, adapters)
    texts = {"a": [f"{WORDS['pos']} 1", f"{WORDS['neg']} 2"], "b": ["fine 5", "sad 6"]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        routed = RoutedModel(build_router(library, BuildRequest("examples", examples=texts,
                                                                threshold=None)), library)
    assert not [w for w in caught if "missing adapter keys" in str(w.message)]  # PEFT's false alarm
    got = routed.classify([f"{WORDS['pos']} 8", f"{WORDS['neg']} 9"])
    assert [c.label for c in got] == ["pos", "neg"]
    tuned = train(TrainConfig(base=bert_encoder, data=held_out_data, output=str(tmp_path / "t"),
                              steps=2, threads=1, classifier="tuned"), progress=False)
    mixed = Library.from_dirs(bert_encoder, {"a": probe_adapter.output, "t": tuned.output})
    with pytest.raises(UsageError, match="read the encoder differently"):
        RoutedModel(build_router(mixed, BuildRequest("examples", examples={"a": texts["a"],
                                                                           "t": texts["b"]},
                                                     threshold=None)), mixed)


def test_the_project_fixes_the_kind_of_classifier(probe_adapter, tmp_path):
    from modelgit.workflow.project import parse_project
    from modelgit.workflow.validate import pooling_problems_of

    project = parse_project({"task": "classification", "classifier": "probe"})
    assert project.classifier == "probe" and project.to_dict()["classifier"] == "probe"
    assert "classifier" not in parse_project({"task": "classification"}).to_dict()
    for bad in ({"task": "classification", "classifier": "mean"}, {"classifier": "probe"}):
        with pytest.raises(UsageError, match="classifier"):
            parse_project(bad)
    assert pooling_problems_of(probe_adapter.output, "bert", "probe", 1 << 20) == []
    assert pooling_problems_of(probe_adapter.output, "bert", None, 1 << 20) == []
    [problem] = pooling_problems_of(probe_adapter.output, "bert", "tuned", 1 << 20)
    assert "--classifier tuned" in problem
    [problem] = pooling_problems_of(probe_adapter.output, "gpt2", None, 1 << 20)
    assert "BERT encoders" in problem


def test_the_probe_takes_its_examples_from_the_whole_data():
    """Over the limit, the examples are spread over the data's order: a file sorted by class
    (every negative first) still gives the probe both classes."""
    from modelgit.adapters.probe import spread

    labels = ["neg"] * 10 + ["pos"] * 10
    assert {labels[i] for i in spread(len(labels), 4)} == {"neg", "pos"}
    assert spread(20, 4) == [0, 5, 10, 15] and spread(3, 8) == [0, 1, 2]


def test_a_mean_pooled_adapter_that_changes_the_pooler_is_refused(bert_encoder, held_out_data,
                                                                   tmp_path, capsys):
    """A tuned adapter (its LoRA adapts the pooler) relabelled `"pooling": "mean"`: it would be
    reviewed with its own pooler and released with the constant one."""
    import shutil

    from modelgit.merge.task_heads import base_model_type
    from modelgit.workflow.project import Limits
    from modelgit.workflow.validate import ContributionError, validate_adapter

    tuned = train(TrainConfig(base=bert_encoder, data=held_out_data, output=str(tmp_path / "t"),
                              steps=2, threads=1, classifier="tuned"), progress=False)
    forged = tmp_path / "forged"
    shutil.copytree(tuned.output, forged)
    labels = json.loads((forged / "labels.json").read_text())
    (forged / "labels.json").write_text(json.dumps({**labels, "pooling": "mean"}))
    code = main(["--no-progress", "merge", "--method", "linear", "--base", bert_encoder, "-o",
                 str(tmp_path / "m"), "--model", f"{bert_encoder}+{forged}"])
    err = capsys.readouterr().err
    assert code != 0 and "changes the pooler" in err and "Traceback" not in err
    from safetensors import safe_open

    with safe_open(f"{bert_encoder}/model.safetensors", "pt") as handle:
        base = {k: (str(handle.get_slice(k).get_dtype()), tuple(handle.get_slice(k).get_shape()))
                for k in handle.keys()}
    validate_adapter(tuned.output, base, Limits(), None, base_model_type(bert_encoder))  # passes
    with pytest.raises(ContributionError, match="changes the pooler"):
        validate_adapter(str(forged), base, Limits(), None, base_model_type(bert_encoder))


def test_embeddings_of_a_probe_classifier_are_the_encoders(bert_encoder, probe_adapter, tmp_path):
    """Its last hidden states are the constant layer's (every token about the mean): `predict
    --task embed` and serve's embeddings read the encoder's, before it, as the config marks."""
    import pyarrow.parquet as pq

    from modelgit.adapters.pooling import CONFIG_KEY
    from modelgit.predict import predict

    texts = tmp_path / "in.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("good great 3", "sad poor")))
    rows = {}
    for name, adapter in (("base", None), ("probe", probe_adapter.output)):
        predict(source=bert_encoder, adapter=adapter, input=str(texts), output=str(tmp_path / name),
                task="embed", batch_rows=2)
        rows[name] = pq.read_table(tmp_path / name).column("embedding").to_pylist()
    # the probe's LoRA is zero: the encoder's states are the base's
    torch.testing.assert_close(torch.tensor(rows["probe"]), torch.tensor(rows["base"]),
                               rtol=1e-4, atol=1e-5)
    assert getattr(load_model(bert_encoder, "classification", adapter_dir=probe_adapter.output)
                   .config, CONFIG_KEY) == "mean"
    out = tmp_path / "merged"
    assert main(["--no-progress", "merge", "--method", "linear", "--base", bert_encoder, "-o",
                 str(out), "--model", f"{bert_encoder}+{probe_adapter.output}"]) == 0
    assert json.loads((out / "config.json").read_text())[CONFIG_KEY] == "mean"  # released, still known


@pytest.mark.parametrize("change", [{"model_type": "gpt2"}, {"hidden_size": 10 ** 9},
                                    {"hidden_size": "384"}, {"num_hidden_layers": True},
                                    {"intermediate_size": 0},
                                    {"architectures": ["BertForSequenceClassification"]}])
def test_mean_pooling_names_what_a_config_lacks(change):
    """A config.json it cannot build the constant layer for (or not without a huge allocation)."""
    from modelgit.adapters.pooling import mean_pooling_problem

    config = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
              "intermediate_size": 64, "architectures": ["BertModel"]}
    assert mean_pooling_problem(config) is None
    assert mean_pooling_problem({**config, **change})
