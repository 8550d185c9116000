"""Metrics pinned against hand computations and against transformers' own loss."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from modelgit.adapters import load_model, load_tokenizer
from modelgit.errors import UsageError
from modelgit.eval import accuracy, macro_f1, perplexity


def test_macro_f1_by_hand():
    labels = [0, 0, 0, 1, 1, 2]
    predictions = [0, 0, 1, 1, 2, 2]
    # class 0: tp 2 fp 0 fn 1 -> 4/5; class 1: tp 1 fp 1 fn 1 -> 1/2; class 2: tp 1 fp 1 fn 0 -> 2/3
    assert macro_f1(labels, predictions) == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert accuracy(labels, predictions) == pytest.approx(4 / 6)
    # a class only predicted, never true, still counts (F1 0), as in scikit-learn
    assert macro_f1([0, 0], [0, 1]) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1(["a", "b"], ["a", "b"]) == 1.0
    with pytest.raises(UsageError):
        macro_f1([0], [])


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=30))
def test_macro_f1_bounds(pairs):
    labels, predictions = [a for a, _ in pairs], [b for _, b in pairs]
    score = macro_f1(labels, predictions)
    assert 0.0 <= score <= 1.0
    assert (score == 1.0) == (labels == predictions)


def test_perplexity_is_the_token_weighted_loss_of_transformers(lm_base):
    model = load_model(lm_base, "causal_lm")
    tokenizer = load_tokenizer(lm_base)
    texts = ["the cat sat", "a bird flew over the green tree by the river", "the dog sat on the log"]
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:  # one text at a time: no padding at all
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            nll += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    for batch_size in (1, 2, 3):  # padding must not change anything
        result = perplexity(model, tokenizer, texts, max_length=64, batch_size=batch_size)
        assert result["tokens"] == tokens
        assert result["loss"] == pytest.approx(nll / tokens, rel=1e-5)
        assert result["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)


def test_perplexity_of_one_token_texts_is_an_error(lm_base):
    with pytest.raises(UsageError, match="at least two tokens"):
        perplexity(load_model(lm_base, "causal_lm"), load_tokenizer(lm_base), ["cat"], max_length=1)
