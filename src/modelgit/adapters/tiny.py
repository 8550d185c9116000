"""Tiny seeded models with a word-level tokenizer, built on the spot: nothing is downloaded.

For tests, demos and trying the loop offline: a 2-layer Llama-style causal LM or a 2-layer BERT
sequence classifier of a few thousand parameters, saved as ordinary transformers directories
(safetensors weights, ``config.json``, a fast tokenizer) that every modelgit command accepts.
"""

from __future__ import annotations

import os
import re

__all__ = ["SPECIAL_TOKENS", "tiny_tokenizer", "tiny_causal_lm", "tiny_classifier"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[CLS]", "[SEP]")


def tiny_tokenizer(texts: list[str], template: str = "[BOS] $A"):
    """A lowercasing word-level ``PreTrainedTokenizerFast`` over the words of ``texts``.

    Args:
        template: the special tokens around each text (e.g. ``"[CLS] $A [SEP]"`` for BERT).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in SPECIAL_TOKENS if t in template])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]", cls_token="[CLS]",
                                   sep_token="[SEP]")


def _save(model, tokenizer, path) -> None:
    from .loading import quiet_transformers

    with quiet_transformers():
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)


def tiny_causal_lm(path: str | os.PathLike, texts: list[str], seed: int = 0, hidden: int = 32,
                   layers: int = 2) -> str:
    """Write a randomly initialised (seeded) tiny Llama causal LM + tokenizer to ``path``."""
    import torch
    import transformers

    tokenizer = tiny_tokenizer(texts)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    _save(model, tokenizer, path)
    return os.fspath(path)


def tiny_classifier(path: str | os.PathLike, texts: list[str], num_labels: int = 2, seed: int = 0,
                    hidden: int = 32, layers: int = 2) -> str:
    """Write a randomly initialised (seeded) tiny BERT sequence classifier + tokenizer."""
    import torch
    import transformers

    tokenizer = tiny_tokenizer(texts, template="[CLS] $A [SEP]")
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=512,
        num_labels=num_labels, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BertForSequenceClassification(config)
    _save(model, tokenizer, path)
    return os.fspath(path)
