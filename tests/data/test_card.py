"""Data cards carry sizes and hashes of the data, never its content."""

from __future__ import annotations

import hashlib
import json

from modelgit.data import data_card, write_data_card


def test_card_of_a_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "the quixotic zebrafish", "label": "pos"}\n'
                    '{"text": "plain words", "label": "neg"}\n', encoding="utf-8")
    card = data_card(path)
    raw = path.read_bytes()
    assert card["sha256"] == hashlib.sha256(raw).hexdigest() == card["files"][0]["sha256"]
    assert card["bytes"] == len(raw) == card["files"][0]["bytes"]
    assert card["files"][0]["name"] == "train.jsonl" and card["format"] == "jsonl"
    assert (card["records"], card["labeled"], card["distinct_labels"]) == (2, 2, 2)
    write_data_card(card, tmp_path / "card.json")
    text = (tmp_path / "card.json").read_text()
    for word in ("quixotic", "zebrafish", "plain", "pos", "neg"):
        assert word not in text
    assert text == json.dumps(card, indent=2, sort_keys=True) + "\n"


def test_card_of_a_directory_changes_with_any_file(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha\nbeta\n")
    (folder / "b.txt").write_text("gamma\n")
    first = data_card(folder)
    assert [f["name"] for f in first["files"]] == ["a.txt", "b.txt"]
    assert first["records"] == 3 and first["format"] == "dir" and first["bytes"] == 17
    listing = "".join(f"{f['sha256']}  {f['name']}\n" for f in first["files"])
    assert first["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert data_card(folder) == first  # deterministic
    (folder / "b.txt").write_text("gammb\n")
    assert data_card(folder)["sha256"] != first["sha256"]
    (folder / "b.txt").rename(folder / "c.txt")
    assert data_card(folder)["sha256"] != first["sha256"]
