"""Tiny seeded models built on the spot (nothing downloaded), one CPU thread per test.

Shared by the conftest.py of tests/adapters and tests/eval, which re-export these fixtures."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from modelgit.adapters.tiny import tiny_causal_lm, tiny_classifier  # noqa: E402

LM_TEXTS = ["the cat sat on the mat and the dog sat on the log",
            "a bird flew over the green tree by the river"] * 12
POSITIVE = ["good great fine nice", "great nice good", "nice fine great good", "fine good nice"]
NEGATIVE = ["bad awful poor sad", "awful sad bad", "poor bad sad awful", "sad poor awful"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and do not stall on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def lm_base(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("lm") / "base", LM_TEXTS, seed=0)


@pytest.fixture(scope="session")
def lm_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm-data") / "train.txt"
    path.write_text("\n".join(LM_TEXTS) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def cls_base(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("cls") / "base", POSITIVE + NEGATIVE, seed=0)


@pytest.fixture(scope="session")
def cls_texts():
    """The classifier's toy data: (texts, class indices) with neg = 0, pos = 1."""
    return POSITIVE + NEGATIVE, [1] * len(POSITIVE) + [0] * len(NEGATIVE)


@pytest.fixture(scope="session")
def cls_data(tmp_path_factory):
    import json

    path = tmp_path_factory.mktemp("cls-data") / "train.jsonl"
    rows = [{"text": t, "label": "pos"} for t in POSITIVE] + [{"text": t, "label": "neg"} for t in NEGATIVE]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def bert_encoder(cls_base, tmp_path_factory):
    """The classifier's body alone: a bare ``BertModel`` directory (no pooler head, no
    classifier) with the tokenizer: the kind of base mean pooling (``--classifier probe``) takes."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = tmp_path_factory.mktemp("encoder") / "bert"
    BertForSequenceClassification.from_pretrained(cls_base).bert.save_pretrained(path)
    AutoTokenizer.from_pretrained(cls_base).save_pretrained(path)
    return str(path)
