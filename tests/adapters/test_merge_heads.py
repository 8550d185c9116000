"""Classification adapters trained by `modelgit train` merged by `modelgit merge` (issue 17).

The base directory holds a bare ``BertModel``; the adapters were trained on the task model
(``BertForSequenceClassification``: body under ``bert.``, a new head in ``modules_to_save``)."""

from __future__ import annotations

import json

import pytest
import yaml

from modelgit.adapters import TrainConfig, train
from modelgit.cli.main import main
from modelgit.merge.task_heads import align_name

POS = ["good great fine nice", "great nice good", "nice fine great good", "fine good nice"]
NEG = ["bad awful poor sad", "awful sad bad", "poor bad sad awful", "sad poor awful"]
MID = ["plain okay fine", "okay plain so so", "so so okay", "plain so okay"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A bare BertModel directory (names without ``bert.``, no head) with its tokenizer."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from modelgit.adapters.tiny import tiny_classifier

    root = tmp_path_factory.mktemp("encoder")
    cls = tiny_classifier(root / "cls", POS + NEG + MID, seed=0)
    BertForSequenceClassification.from_pretrained(cls).bert.save_pretrained(root / "bert")
    AutoTokenizer.from_pretrained(cls).save_pretrained(root / "bert")
    return str(root / "bert")


def _data(path, groups) -> str:
    rows = [{"text": t, "label": label} for label, texts in groups.items() for t in texts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def adapters(encoder, tmp_path_factory):
    """Adapters ``a`` and ``b`` (classes neg, pos; different seeds) and ``c`` (neg, ok, pos)."""
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for name, groups, seed in (("a", {"pos": POS, "neg": NEG}, 0), ("b", {"pos": POS, "neg": NEG}, 1),
                               ("c", {"pos": POS, "neg": NEG, "ok": MID}, 0)):
        out[name] = train(TrainConfig(base=encoder, data=_data(root / f"{name}.jsonl", groups),
                                      output=str(root / name), steps=6, lr=1e-2, seed=seed,
                                      threads=1, task="classification"), progress=False).output
    return out


def _logits(model_dir, tokenizer_dir, adapter=None):
    import torch

    from modelgit.adapters.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    batch = tokenizer(POS[:2] + NEG[:2], return_tensors="pt", padding=True)
    model = load_model(model_dir, "classification", adapter_dir=adapter)
    with torch.no_grad():
        return model(**batch).logits


def test_one_classifier_adapter_merged_onto_the_bare_encoder_is_the_peft_model(
        encoder, adapters, tmp_path, capsys):
    """Failed before: "the adapter changes tensors the base model does not have"."""
    import torch

    out = tmp_path / "merged"
    assert main(["--no-progress", "merge", "--method", "linear", "--model",
                 f"{encoder}+{adapters['a']}", "-o", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    # the merged directory is the classifier PEFT builds from the base and the adapter
    assert torch.allclose(_logits(str(out), str(out)), _logits(encoder, encoder, adapters["a"]), atol=1e-5)
    capsys.readouterr()
    data = _data(tmp_path / "eval.jsonl", {"pos": POS, "neg": NEG})
    assert main(["--no-progress", "eval", str(out), "--data", data, "--task", "classification"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_heads_of_adapters_with_the_same_classes_are_averaged(encoder, adapters, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "ties"
    assert main(["--no-progress", "merge", "--method", "ties", "--base", encoder, "--density", "0.5",
                 "--model", f"{encoder}+{adapters['a']}", "--model", f"{encoder}+{adapters['b']}",
                 "-o", str(out)]) == 0
    merged = load_file(str(out / "model.safetensors"))
    heads = [load_file(f"{adapters[n]}/adapter_model.safetensors") for n in "ab"]
    for name in ("classifier.weight", "classifier.bias"):
        key = f"base_model.model.{name}"
        assert not torch_equal(heads[0][key], heads[1][key])
        assert torch_close(merged[name], (heads[0][key] + heads[1][key]) / 2)
    # the body is named as the task model's, every tensor of the base is there
    base = load_file(f"{encoder}/model.safetensors")
    assert {f"bert.{n}" for n in base} | {"classifier.weight", "classifier.bias"} == set(merged)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def torch_close(a, b) -> bool:
    import torch

    return bool(torch.allclose(a, b, atol=1e-6))


def test_adapters_naming_different_classes_are_refused_unless_heads_are_kept(
        encoder, adapters, tmp_path, capsys):
    from safetensors.torch import load_file

    specs = [f"{encoder}+{adapters['a']}", f"{encoder}+{adapters['c']}"]
    assert main(["--no-progress", "merge", "--method", "ties", "--base", encoder, "--model", specs[0],
                 "--model", specs[1], "--density", "0.5", "-o", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert f"only in {specs[1]}: ok" in err and "heads: keep" in err
    assert not (tmp_path / "no").exists()
    recipe = {"merge_method": "ties", "base_model": encoder, "heads": "keep",
              "models": [{"model": s, "parameters": {"weight": 1.0, "density": 0.5}} for s in specs]}
    (tmp_path / "keep.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "keep"
    assert main(["--no-progress", "merge", str(tmp_path / "keep.yaml"), "-o", str(out)]) == 0
    record = json.loads((out / "heads.json").read_text())["heads"]
    assert [(h["model"], h["id2label"]) for h in record] == [
        (specs[0], {"0": "neg", "1": "pos"}), (specs[1], {"0": "neg", "1": "ok", "2": "pos"})]
    heads = load_file(str(out / "heads.safetensors"))
    assert heads["1/classifier.weight"].shape[0] == 3 and heads["0/classifier.weight"].shape[0] == 2
    # the body keeps the base's names and architecture: a bare encoder again
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    assert set(load_file(str(out / "model.safetensors"))) == set(load_file(f"{encoder}/model.safetensors"))


def test_a_misspelled_head_rule_names_the_valid_ones(encoder, adapters, tmp_path, capsys):
    recipe = {"merge_method": "linear", "heads": "avrage", "models": [{"model": f"{encoder}+{adapters['a']}"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["--no-progress", "merge", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "o")]) == 2
    assert "heads: expected one of average, keep, got 'avrage' (did you mean `average`?)" in \
        capsys.readouterr().err


def test_an_adapter_merged_alone_carries_its_base_config_and_tokenizer(encoder, adapters, tmp_path,
                                                                        capsys):
    """Failed before: ``--model ADAPTER`` (its base named in adapter_config.json) wrote weights
    only, and `modelgit eval` of the output could not load a tokenizer."""
    out = tmp_path / "alone"
    assert main(["--no-progress", "merge", "--method", "linear", "--model", adapters["a"],
                 "-o", str(out)]) == 0
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    data = _data(tmp_path / "eval.jsonl", {"pos": POS, "neg": NEG})
    capsys.readouterr()
    assert main(["--no-progress", "eval", str(out), "--data", data, "--task", "classification"]) == 0


def test_a_base_saved_as_the_task_model_takes_the_adapter_without_renaming(encoder, adapters,
                                                                             tmp_path):
    """The other way: a base that already is the classifier (a release's weights) keeps its
    names, and the adapter's head replaces the base's."""
    import torch

    first = tmp_path / "first"
    assert main(["--no-progress", "merge", "--method", "linear", "--model",
                 f"{encoder}+{adapters['a']}", "-o", str(first)]) == 0
    again = tmp_path / "again"
    assert main(["--no-progress", "merge", "--method", "linear", "--model",
                 f"{first}+{adapters['b']}", "-o", str(again)]) == 0
    assert torch.allclose(_logits(str(again), str(again)), _logits(str(first), str(first), adapters["b"]),
                          atol=1e-5)


def test_names_are_mapped_both_ways_by_the_task_models_prefix():
    bare, prefixed = {"encoder.x.weight"}, {"bert.encoder.x.weight"}
    assert align_name("bert.encoder.x.weight", bare, "bert") == "encoder.x.weight"
    assert align_name("encoder.x.weight", prefixed, "bert") == "bert.encoder.x.weight"
    assert align_name("classifier.weight", bare, "bert") is None
    assert align_name("bert.encoder.x.weight", bare, None) is None


def test_labels_spelled_as_numbers_travel_as_class_names(encoder, tmp_path, capsys):
    """Man-page sections 1, 5, 8 as JSON numbers: three classes named "1", "5", "8" in the
    adapter's labels.json, in the merged model's config.json, and in its evaluation (before,
    a nine-way head whose classes 0, 2-4, 6, 7 never occurred)."""
    data = _data(tmp_path / "sections.jsonl", {1: POS, 5: NEG, 8: MID})
    out = train(TrainConfig(base=encoder, data=data, output=str(tmp_path / "a"), steps=20,
                            lr=1e-2, head_lr=5e-2, threads=1, task="classification"),
                progress=False).output
    names = {"0": "1", "1": "5", "2": "8"}
    assert json.loads((tmp_path / "a" / "labels.json").read_text()) == {"id2label": names}
    merged = tmp_path / "merged"
    assert main(["--no-progress", "merge", "--method", "linear", "--model", f"{encoder}+{out}",
                 "-o", str(merged)]) == 0
    assert json.loads((merged / "config.json").read_text())["id2label"] == names
    scores = []
    for argv in ([str(merged)], [encoder, "--adapter", out]):
        capsys.readouterr()
        assert main(["--no-progress", "eval", *argv, "--data", data, "--task", "classification",
                     "--json"]) == 0  # labels 5 and 8 are classes, not indices out of range
        scores.append(json.loads(capsys.readouterr().out)[0]["metrics"])
    assert scores[0] == scores[1] and scores[0]["n"] == 12


@pytest.fixture(scope="module")
def on_classifier(tmp_path_factory):
    """A tiny BERT classifier base (transformers' default class names LABEL_0, LABEL_1) and
    adapters trained on it: ``a`` and ``b`` (classes neg, pos), ``r`` (the same two classes
    numbered the other way: pos, neg)."""
    from modelgit.adapters.tiny import tiny_classifier

    root = tmp_path_factory.mktemp("on-classifier")
    base = tiny_classifier(root / "base", POS + NEG + MID, seed=0)
    out = {"base": base}
    for name, labels, seed in (("a", "neg,pos", 0), ("b", "neg,pos", 1), ("r", "pos,neg", 0)):
        out[name] = train(TrainConfig(base=base, data=_data(root / f"{name}.jsonl", {"pos": POS, "neg": NEG}),
                                      output=str(root / name), steps=4, lr=1e-2, seed=seed, threads=1,
                                      task="classification", labels=tuple(labels.split(","))),
                          progress=False).output
    return out


def test_adapters_merged_onto_a_classifier_base_name_their_classes(on_classifier, tmp_path, capsys):
    """Failed before: the base already has a head, so the adapters' heads were merged as plain
    weights and config.json kept the base's LABEL_0, LABEL_1: `eval` then refused the data
    ("labels the model has no class for")."""
    m = on_classifier
    out = tmp_path / "merged"
    assert main(["--no-progress", "merge", "--method", "ties", "--density", "0.5", "--base", m["base"],
                 "--model", f"{m['base']}+{m['a']}", "--model", f"{m['base']}+{m['b']}",
                 "-o", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
    data = _data(tmp_path / "test.jsonl", {"pos": POS[:2], "neg": NEG[:2]})
    capsys.readouterr()
    assert main(["--no-progress", "eval", str(out), "--data", data, "--task", "classification",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["metrics"]["n"] == 4


def test_heads_numbered_differently_are_not_merged_onto_a_classifier_base(on_classifier, tmp_path, capsys):
    """Rows of heads that number the classes differently must not be averaged, whether the
    head is new (a bare encoder) or replaces the base's."""
    m = on_classifier
    capsys.readouterr()
    assert main(["--no-progress", "merge", "--method", "linear", "--base", m["base"],
                 "--model", f"{m['base']}+{m['a']}", "--model", f"{m['base']}+{m['r']}",
                 "-o", str(tmp_path / "merged")]) != 0
    err = capsys.readouterr().err
    assert "same classes in another order (neg, pos vs pos, neg)" in err and "Traceback" not in err
    assert not (tmp_path / "merged").exists()


def test_full_classifiers_naming_classes_differently_are_not_merged(on_classifier, tmp_path, capsys):
    """Two whole classifiers (merged adapters) whose config.json number the classes differently;
    the base's default names LABEL_0, LABEL_1 name nothing and are not compared."""
    m = on_classifier
    for name in ("a", "r"):
        assert main(["--no-progress", "merge", "--method", "linear",
                     "--model", f"{m['base']}+{m[name]}", "-o", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert main(["--no-progress", "merge", "--method", "linear", "--model", str(tmp_path / "a"),
                 "--model", str(tmp_path / "r"), "-o", str(tmp_path / "both")]) != 0
    assert "same classes in another order" in capsys.readouterr().err
    assert main(["--no-progress", "merge", "--method", "task_arithmetic", "--base", m["base"],
                 "--model", str(tmp_path / "a"), "-o", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}


@pytest.mark.parametrize("config_text, merged", [
    ('{"architectures": ["BertForSequenceClassification"], "id2label": ["neg", "pos"]', True),  # cut
    ('{"architectures": "BertForSequenceClassification", "id2label": {"0": "pos", "1": "neg"}}', True),
    ('{"architectures": ["BertForSequenceClassification"], "id2label": {"a": "pos", "b": "neg"}}', True),
    ('{"architectures": ["BertForSequenceClassification"], "id2label": ["pos", "neg"]}', True),
    ('{"architectures": ["BertForSequenceClassification"], "id2label": {"' + "9" * 5000 + '": "x"}}', True),
    ('[1, 2, 3]', True),
    ('{"architectures": ["BertForSequenceClassification"], "id2label": {"0": {"x": 1}, "1": null}}', False),
])
def test_a_hand_written_classifier_config_is_a_message_not_a_traceback(on_classifier, tmp_path,
                                                                        capsys, config_text, merged):
    """Whole classifiers whose config.json someone else wrote: a label map the merge cannot read
    (not JSON, not a map of numbers, architectures not a list) names no classes to compare and the
    merge goes on; names it can read but that differ are refused with a message."""
    import shutil

    m = on_classifier
    good = tmp_path / "good"
    assert main(["--no-progress", "merge", "--method", "linear", "--model", f"{m['base']}+{m['a']}",
                 "-o", str(good)]) == 0
    odd = tmp_path / "odd"
    shutil.copytree(good, odd)
    (odd / "config.json").write_text(config_text)
    capsys.readouterr()
    code = main(["--no-progress", "merge", "--method", "linear", "--model", str(good),
                 "--model", str(odd), "-o", str(tmp_path / "both")])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if merged:
        assert code == 0
    else:
        assert code != 0 and "the task heads name different classes" in err
