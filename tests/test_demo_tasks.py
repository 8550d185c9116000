"""Labelled tasks from this machine's files: balanced, deterministic, disjoint splits."""

from __future__ import annotations

import gzip
import json

import pytest

from modelgit import demo_tasks
from modelgit.demo_data import domain_texts
from modelgit.demo_tasks import TASKS, task_examples, task_labels, write_task_splits
from modelgit.errors import UsageError


@pytest.mark.parametrize("task", TASKS)
def test_examples_are_balanced_interleaved_and_deterministic(task):
    labels = task_labels(task)
    examples = task_examples(task, 12, max_chars=400, seed=5)
    assert len(examples) == 12 * len(labels)
    assert [label for _, label in examples] == list(labels) * 12
    assert examples == task_examples(task, 12, max_chars=400, seed=5)
    assert task_examples(task, 16, max_chars=400, seed=5)[:len(examples)] == examples
    assert task_examples(task, 12, max_chars=400, seed=6) != examples
    texts = [text for text, _ in examples]
    assert len(set(texts)) == len(texts)
    assert all(0 < len(text) <= 400 for text in texts)


def test_language_texts_are_the_domains_texts():
    examples = task_examples("language", 5, max_chars=300, seed=2)
    for label in task_labels("language"):
        assert [t for t, l in examples if l == label] == domain_texts(label, 5, 300, seed=2)


def _page(name: str, body: str) -> bytes:
    return gzip.compress(f'.TH {name} 1\n.SH NAME\n{name} \\- a demo page\n.SH DESCRIPTION\n'
                         f'{body}\n'.encode())


def _man_pages(root, pages: int, extra: dict[str, tuple[str, str, str]], monkeypatch) -> None:
    """``pages`` pages "Section S page i" in every section's directory under ``root``, plus
    ``extra[S] = (file name, page name, body)``; modelgit reads its man pages there."""
    prose = "This page tells the reader what the program does and how it is used in a shell. " * 4
    for section in task_labels("mansection"):
        folder = root / f"man{section}"
        folder.mkdir()
        for i in range(pages):
            (folder / f"p{section}x{i}.{section}.gz").write_bytes(
                _page(f"p{section}x{i}", f"Section {section} page {i}. {prose}"))
        if section in extra:
            file_name, name, body = extra[section]
            (folder / file_name).write_bytes(_page(name, body))
    monkeypatch.setattr(demo_tasks, "_MAN_ROOT", str(root))


def test_man_sections_come_from_their_directories(tmp_path, monkeypatch):
    legal = "Copyright 2020 the authors; licensed under the MIT license. " * 5
    _man_pages(tmp_path, 3, {s: (f"legal{s}.{s}.gz", "legal", legal) for s in task_labels("mansection")},
               monkeypatch)
    examples = task_examples("mansection", 3, max_chars=600)
    for text, label in examples:
        assert f"Section {label} page" in text
        assert "Copyright" not in text
    with pytest.raises(UsageError, match=r"found 3 texts of manual section 1 in .*man1.*4"):
        task_examples("mansection", 4, max_chars=600)


def test_a_text_under_two_labels_is_left_out_of_both(tmp_path, monkeypatch):
    """A boilerplate paragraph in pages of two sections says nothing of either: both leave it out
    and read on (before, asking for enough texts to reach it was refused: "1 texts appear under
    label '7' and another label", at 180 per section of this machine's pages)."""
    shared = "The full documentation for this tool is maintained as a Texinfo manual. " * 5
    _man_pages(tmp_path, 4, {s: (f"info.{s}.gz", "info", shared) for s in ("1", "7")}, monkeypatch)
    examples = task_examples("mansection", 4, max_chars=600)
    assert len(examples) == 4 * len(task_labels("mansection"))
    for text, label in examples:
        assert f"Section {label} page" in text and "Texinfo" not in text
    with pytest.raises(UsageError, match=r"found 5 texts of manual section 1 .*6 were asked.*"
                                         r"left out of both: 2 of those read"):
        task_examples("mansection", 5, max_chars=600, labels=("1", "7"))


def test_splits_are_disjoint_jsonl_with_labels(tmp_path):
    paths = write_task_splits(str(tmp_path), "language", train=6, test=3, max_chars=300, seed=1)
    assert paths == {"train": str(tmp_path / "language" / "train.jsonl"),
                     "test": str(tmp_path / "language" / "test.jsonl")}
    records = {split: [json.loads(line) for line in open(path, encoding="utf-8")]
               for split, path in paths.items()}
    assert len(records["train"]) == 24 and len(records["test"]) == 12
    assert all(set(r) == {"text", "label"} for rs in records.values() for r in rs)
    train = {r["text"] for r in records["train"]}
    assert not train & {r["text"] for r in records["test"]}
    assert [(r["text"], r["label"]) for r in records["train"] + records["test"]] == \
        task_examples("language", 9, max_chars=300, seed=1)
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_bad_arguments_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown task 'langauge'.*did you mean 'language'"):
        task_labels("langauge")
    with pytest.raises(UsageError, match="per_label"):
        task_examples("language", -1)
    with pytest.raises(UsageError, match="split sizes"):
        write_task_splits(str(tmp_path), "language", -1, 2)
    assert task_examples("language", 0) == []


def test_a_subset_of_labels(tmp_path):
    examples = task_examples("mansection", 3, max_chars=400, labels=("8", "1"))
    assert [label for _, label in examples] == ["1", "8"] * 3
    assert [t for t, l in examples if l == "1"] == \
        [t for t, l in task_examples("mansection", 3, max_chars=400) if l == "1"]
    paths = write_task_splits(str(tmp_path), "language", 2, 1, 300, labels=("c", "shell"))
    assert {json.loads(line)["label"] for line in open(paths["test"])} == {"c", "shell"}
    with pytest.raises(UsageError, match="choose two or more of 1, 2, 3"):
        task_examples("mansection", 3, labels=("4",))
    with pytest.raises(UsageError, match="two or more"):
        task_examples("language", 3, labels=("c",))


_DUMP = """Package: foo
Source: foo-src
Section: games
Description: a puzzle about falling blocks

Package: foo-data
Source: foo-src (1.2-3)
Section: games
Description: a puzzle about falling blocks (data files)

Package: bar
Section: contrib/games
Description: race cars around a track

Package: mutt
Section: mail
Description: text-based mail reader

Package: old-net
Section: net
Description: transitional package

Package: old-mail
Section: mail
Description: Transitional package

Package: nodesc
Section: net

Package: ping2
Section: net
Description: send ICMP echo requests
"""


def test_debian_sections_come_from_one_description_per_source_package(monkeypatch):
    from modelgit import demo_data

    monkeypatch.setattr(demo_data, "_apt_dump", lambda: _DUMP)
    # the index uncached, so that it reads the forged dump (and the cache keeps the machine's)
    monkeypatch.setattr(demo_tasks, "_deb_index", demo_tasks._deb_index.__wrapped__)
    games = demo_tasks._deb_section_texts("games", 2, 600, seed=0)
    # one text per source (foo-data repeats foo-src), contrib/games is games
    assert sorted(games) == ["a puzzle about falling blocks", "race cars around a track"]
    # a description found in two sections names neither
    assert demo_tasks._deb_section_texts("mail", 1, 600, 0) == ["text-based mail reader"]
    assert demo_tasks._deb_section_texts("net", 1, 600, 0) == ["send ICMP echo requests"]
    with pytest.raises(UsageError, match=r"found 1 package descriptions of Debian section 'net'.*2 were asked"):
        demo_tasks._deb_section_texts("net", 2, 600, 0)
    assert demo_tasks._deb_section_texts("games", 2, 10, 0)[0] in ("a puzzle a", "race cars ")
