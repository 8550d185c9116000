"""`modelgit demo --task classification`: the contributors' shares, the table, and the quick
demo (a tiny BERT) end to end."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from modelgit.demo_classify import CONTRIBUTORS, QUICK, format_table, write_shares
from modelgit.demo_tasks import task_labels


def _rows(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_each_contributor_holds_an_iid_third_and_the_heldout_is_apart(tmp_path):
    data = write_shares(str(tmp_path), QUICK)
    shares = [_rows(p) for p in data["shares"]]
    heldout = _rows(data["heldout"])
    labels = task_labels("language")
    assert len(shares) == len(CONTRIBUTORS)
    for share in shares:  # every class, the same number of each
        assert Counter(r["label"] for r in share) == {label: QUICK.train for label in labels}
    assert Counter(r["label"] for r in heldout) == {label: QUICK.heldout for label in labels}
    texts = [r["text"] for part in [*shares, heldout] for r in part]
    assert len(set(texts)) == len(texts)  # disjoint


def test_table_rows():
    text = format_table(0.25, {"alice-lora": 0.5, "bob-lora": 0.75}, 0.8,
                        {"accuracy": 0.8, "macro_f1": 0.7})
    lines = text.splitlines()
    assert lines[0].split() == ["model", "held-out", "accuracy"]
    assert lines[2].split() == ["base", "(new", "head)", "0.250"]
    assert lines[-2].split() == ["release", "v2", "0.800"]
    assert lines[-1].endswith("0.800 (macro-F1 0.700)")


@pytest.mark.slow  # three trainings of a tiny BERT, a review and a release: ~15 CPU-s
def test_quick_classification_demo(capsys, tmp_path):
    from modelgit.cli.main import main

    assert main(["--no-progress", "demo", "--task", "classification", "--quick", "--json",
                 "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    figures = json.loads(out[out.index("\n{") + 1:])
    assert figures["labels"] == list(task_labels("language"))
    assert set(figures["adapters"]) == {f"{who}-lora" for who, _ in CONTRIBUTORS}
    assert figures["accepted"]  # the base's new, untrained head is the chance level
    assert all(figures["adapters"][name] > figures["base"] for name in figures["accepted"])
    # the consumer's clone of v2 is the released classifier
    assert figures["consumer"]["accuracy"] == figures["release"]
    assert figures["consumer"]["n"] == 4 * QUICK.heldout
    released = json.loads((tmp_path / "consumer" / "model" / "config.json").read_text())
    assert released["id2label"] == {str(i): c for i, c in enumerate(task_labels("language"))}
    card = (tmp_path / "consumer" / "model" / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
