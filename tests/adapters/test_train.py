"""LoRA training end to end on tiny seeded models: loss falls, outputs load, runs repeat exactly."""

from __future__ import annotations

import json

from modelgit.fingerprint import fingerprint_dir
import os
import stat

import pytest
import torch

from modelgit.adapters import TrainConfig, load_model, load_tokenizer, train
from modelgit.errors import UsageError
from modelgit.eval import classification_metrics
from modelgit.merge.lora import load_adapter


def lm_config(base, data, output, **extra) -> TrainConfig:
    settings = dict(steps=20, lr=1e-2, batch_size=4, max_length=32, seed=0, threads=1)
    settings.update(extra)
    return TrainConfig(base=base, data=data, output=str(output), **settings)


def test_causal_lm_training_lowers_the_loss_and_writes_a_peft_adapter(lm_base, lm_data, tmp_path):
    result = train(lm_config(lm_base, lm_data, tmp_path / "out"))
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors",
                                       "data_card.json", "metrics.json", "training_config.json"]
    m = json.loads((out / "metrics.json").read_text())
    assert m == result.metrics and m["task"] == "causal_lm" and m["steps"] == 20
    assert m["loss_curve"][-1] < m["loss_curve"][0] - 0.1
    assert m["examples_seen"] == 80 and m["tokens_seen"] > 80 and m["tokens_per_second"] > 0
    assert m["trainable_parameters"] < m["total_parameters"] / 5
    assert result.target_modules == ("q_proj", "v_proj")

    import peft

    base = load_model(lm_base, "causal_lm")
    peft_model = peft.PeftModel.from_pretrained(base, str(out))
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())
    from safetensors.torch import load_file

    base_tensors = load_file(os.path.join(lm_base, "model.safetensors"))
    adapter = load_adapter(str(out), base_tensors)
    assert sorted(adapter.lora) == [f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    assert adapter.config["r"] == 8 and adapter.config["lora_alpha"] == 16
    assert all(torch.any(parts["B"] != 0) for parts in adapter.lora.values())  # B starts at 0

    settings = json.loads((out / "training_config.json").read_text())
    assert settings["resolved"] == {"task": "causal_lm", "target_modules": ["q_proj", "v_proj"],
                                    "num_labels": None, "base_fingerprint": fingerprint_dir(lm_base)}
    assert settings["config"]["steps"] == 20 and "torch" in settings["versions"]


def test_same_seed_same_bytes_other_seed_other_bytes(lm_base, lm_data, tmp_path):
    def adapter_bytes(name, seed, **extra):
        train(lm_config(lm_base, lm_data, tmp_path / name, seed=seed, steps=6, dropout=0.1, **extra))
        return ((tmp_path / name / "adapter_model.safetensors").read_bytes(),
                (tmp_path / name / "adapter_config.json").read_bytes())

    first = adapter_bytes("a", 0)
    assert adapter_bytes("b", 0) == first
    assert adapter_bytes("c", 1)[0] != first[0]
    assert adapter_bytes("d", 0, threads=None)[1] == first[1]
    assert torch.get_num_threads() == 1 and not torch.are_deterministic_algorithms_enabled()


def test_training_leaves_the_callers_rng_alone(lm_base, lm_data, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(lm_config(lm_base, lm_data, tmp_path / "o", steps=2))
    assert torch.equal(torch.rand(3), expected)


def test_classifier_reaches_full_accuracy_on_separable_data(cls_base, cls_data, cls_texts, tmp_path):
    out = tmp_path / "cls"
    result = train(TrainConfig(base=cls_base, data=cls_data, output=str(out), steps=30, lr=2e-2,
                               batch_size=8, seed=0, threads=1, save_every=20))
    # the pooler the head reads is adapted too (see modelgit.adapters.targets.resolve_targets)
    assert result.task == "classification" and result.target_modules == ("query", "value",
                                                                          "pooler.dense")
    assert json.loads((out / "labels.json").read_text()) == {"id2label": {"0": "neg", "1": "pos"}}
    model = load_model(cls_base, "classification", adapter_dir=str(out))
    tokenizer = load_tokenizer(cls_base)
    texts, labels = cls_texts
    scores = classification_metrics(model, tokenizer, texts, labels)
    assert scores == {"accuracy": 1.0, "macro_f1": 1.0, "n": 8}
    adapter = load_adapter(str(out))
    assert "classifier.weight" in adapter.saved  # the head is trained whole (modules_to_save)
    checkpoint = out / "checkpoint-20"  # a classifier's checkpoint: its head and labels too
    assert (checkpoint / "labels.json").read_bytes() == (out / "labels.json").read_bytes()
    assert "classifier.weight" in load_adapter(str(checkpoint)).saved


def test_full_training_writes_a_whole_model(lm_base, lm_data, tmp_path):
    import transformers

    out = tmp_path / "full"
    result = train(lm_config(lm_base, lm_data, out, full=True, steps=5, lr=1e-3))
    assert result.full and result.target_modules is None
    assert result.metrics["trainable_parameters"] == result.metrics["total_parameters"]
    assert not (out / "adapter_config.json").exists()
    tuned = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    base = transformers.AutoModelForCausalLM.from_pretrained(lm_base, local_files_only=True)
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(tuned.state_dict()[name], base.state_dict()[name])
    assert transformers.AutoTokenizer.from_pretrained(out)("the cat")["input_ids"]
    assert (out / "data_card.json").exists() and (out / "metrics.json").exists()


def test_explicit_targets_and_all_linear(lm_base, lm_data, tmp_path):
    result = train(lm_config(lm_base, lm_data, tmp_path / "a", steps=1,
                             target_modules=("q_proj", "k_proj", "v_proj", "o_proj")))
    assert result.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    result = train(lm_config(lm_base, lm_data, tmp_path / "b", steps=1, target_modules="all-linear"))
    adapter = load_adapter(str(tmp_path / "b"))
    assert any(m.endswith("mlp.down_proj") for m in adapter.lora) and "lm_head" not in adapter.lora


def test_epochs_cover_the_data(lm_base, lm_data, tmp_path):
    result = train(lm_config(lm_base, lm_data, tmp_path / "e", steps=None, epochs=2, batch_size=5))
    assert result.metrics["examples_seen"] == 2 * 24 and result.metrics["steps"] == 10


def test_overwrite_only_replaces_an_earlier_training_output(lm_base, lm_data, tmp_path):
    out = tmp_path / "o"
    train(lm_config(lm_base, lm_data, out, steps=1))
    with pytest.raises(UsageError, match="--overwrite"):
        train(lm_config(lm_base, lm_data, out, steps=1))
    train(lm_config(lm_base, lm_data, out, steps=2, overwrite=True))
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not the output of an earlier"):
        train(lm_config(lm_base, lm_data, other, steps=1, overwrite=True))
    assert (other / "keep.txt").exists()
    assert not [p for p in os.listdir(tmp_path) if "tmp-" in p]


def test_an_output_that_is_not_a_directory_is_refused_before_training(lm_base, lm_data, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="FIFO"):
        train(lm_config(lm_base, lm_data, fifo, steps=1, overwrite=True))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.listdir(tmp_path) == ["pipe"]


def test_every_module_trained_whole_learns_at_the_head_rate(cls_texts, tmp_path):
    """DistilBERT's classifier is two new layers, pre_classifier and classifier (PEFT trains
    both whole: its rule matches the suffix "classifier"): both learn at --head-lr. Before,
    pre_classifier learnt at the LoRA's rate."""
    import transformers
    from safetensors.torch import load_file

    from modelgit.adapters.tiny import tiny_tokenizer

    texts, labels = cls_texts
    tokenizer = tiny_tokenizer(texts, template="[CLS] $A [SEP]")
    config = transformers.DistilBertConfig(vocab_size=len(tokenizer), dim=32, hidden_dim=64, n_layers=2,
                                           n_heads=4, num_labels=2, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    base = tmp_path / "distilbert"
    transformers.DistilBertForSequenceClassification(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": ["neg", "pos"][y]}) + "\n"
                            for t, y in zip(texts, labels)), encoding="utf-8")
    out = tmp_path / "out"
    train(TrainConfig(base=str(base), data=str(data), output=str(out), steps=3, lr=1e-9, head_lr=1e-2,
                      seed=0, threads=1, task="classification", validation=str(data)), progress=False)
    before = load_file(str(base / "model.safetensors"))
    after = load_adapter(str(out)).saved
    for name in ("pre_classifier.weight", "classifier.weight"):
        moved = (after[name] - before[name]).abs().max().item()
        assert 1e-3 < moved < 0.1, (name, moved)  # three Adam steps of 1e-2, not of 1e-9
