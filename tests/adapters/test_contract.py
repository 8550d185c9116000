"""One contract over a table of tiny architectures: default targets train, save and load back.

A new architecture in DEFAULT_TARGETS gets every check by adding a row here.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from modelgit.adapters import TrainConfig, default_targets, train
from modelgit.adapters.loading import quiet_transformers
from modelgit.adapters.tiny import tiny_tokenizer
from modelgit.errors import UsageError
from modelgit.merge.lora import load_adapter

TEXTS = ["alpha beta gamma delta", "beta gamma delta alpha", "gamma delta alpha beta"] * 4


def _gpt2(vocab):
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64))


def _llama_cls(vocab):
    return transformers.LlamaForSequenceClassification(transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_labels=2))


def _distilbert_cls(vocab):
    return transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
        vocab_size=vocab, dim=32, hidden_dim=64, n_layers=2, n_heads=4, max_position_embeddings=64))


def _qwen2(vocab):
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2))


# builder, task, expected default targets, head saved whole
ARCHITECTURES = {
    "gpt2": (_gpt2, "causal_lm", ("c_attn",), None),
    "qwen2": (_qwen2, "causal_lm", ("q_proj", "v_proj"), None),
    "llama-cls": (_llama_cls, "classification", ("q_proj", "v_proj"), "score.weight"),
    "distilbert-cls": (_distilbert_cls, "classification", ("q_lin", "v_lin"), "classifier.weight"),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_default_targets_train_and_load(name, tmp_path):
    build, task, targets, head = ARCHITECTURES[name]
    tokenizer = tiny_tokenizer(TEXTS, template="[CLS] $A [SEP]")
    torch.manual_seed(0)
    model = build(len(tokenizer))
    base = tmp_path / "base"
    with quiet_transformers():
        model.save_pretrained(base, safe_serialization=True)
    tokenizer.save_pretrained(base)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "out"
    result = train(TrainConfig(base=str(base), data=str(data), output=str(out), task=task, steps=3,
                               lr=1e-2, threads=1))
    assert result.target_modules == targets
    assert result.metrics["last_loss"] == result.metrics["last_loss"]  # not NaN
    base_tensors = dict(model.state_dict())
    adapter = load_adapter(str(out), base_tensors)
    assert {m.rsplit(".", 1)[-1] for m in adapter.lora} == set(targets)
    for tensor, module in adapter.targets().items():  # updates fit the base weights' layout
        assert not torch.equal(adapter.apply(tensor, base_tensors[tensor]), base_tensors[tensor])
    if head:
        assert head in adapter.saved


def test_unknown_architectures_fall_back_to_attention_like_linears():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.value, self.ffn = (torch.nn.Linear(4, 4) for _ in range(3))

    assert default_targets("no-such-arch", Block()) == ("query", "value")
    assert default_targets("gpt2") == ("c_attn",) and default_targets("bert") == ("query", "value")
    with pytest.raises(UsageError, match="pass --targets with some of its linear layers \\(ffn\\)"):
        holder = torch.nn.Module()
        holder.ffn = torch.nn.Linear(2, 2)
        default_targets("no-such-arch", holder)
