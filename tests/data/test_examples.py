"""Every data format yields the same records; bad data fails with a message that says what to do."""

from __future__ import annotations

import csv
import json
import os
import sys

import pytest
from hypothesis import given, settings, strategies as st

from modelgit.data import Example, load_examples, normalize_label
from modelgit.errors import UsageError

RECORDS = [("the zebrafish swims", 1), ("a quiet morning", 0), ("commas, and \"quotes\"", 1)]
EXPECTED = [Example(text, label) for text, label in RECORDS]


def write_jsonl(path, records=RECORDS, text="text", label="label"):
    path.write_text("".join(json.dumps({text: t, label: l}) + "\n" for t, l in records), encoding="utf-8")
    return path


def write_csv(path, records=RECORDS, delimiter=",", text="text", label="label"):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow([label, text])
        writer.writerows([(l, t) for t, l in records])
    return path


def test_jsonl_csv_tsv_give_the_same_records(tmp_path):
    assert load_examples(write_jsonl(tmp_path / "d.jsonl")).take() == EXPECTED
    assert load_examples(write_csv(tmp_path / "d.csv")).take() == EXPECTED  # "1" -> 1
    assert load_examples(write_csv(tmp_path / "d.tsv", delimiter="\t")).take() == EXPECTED


def test_parquet_gives_the_same_records(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"text": [t for t, _ in RECORDS], "label": [l for _, l in RECORDS]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=2)
    examples = load_examples(tmp_path / "d.parquet")
    assert examples.format == "parquet" and examples.take() == EXPECTED


def test_saved_datasets_directory_gives_the_same_records(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = {"text": [t for t, _ in RECORDS], "label": [l for _, l in RECORDS]}
    datasets.Dataset.from_dict(data).save_to_disk(str(tmp_path / "ds"))
    examples = load_examples(tmp_path / "ds")
    assert examples.format == "datasets" and examples.take() == EXPECTED
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(data),
                          "test": datasets.Dataset.from_dict(data)}).save_to_disk(str(tmp_path / "dd"))
    assert load_examples(tmp_path / "dd").take() == EXPECTED


def test_text_units_and_directories(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\n  second line  \nthird\n", encoding="utf-8")
    assert [e.text for e in load_examples(tmp_path / "a.txt")] == ["first line", "second line", "third"]
    assert [e.text for e in load_examples(tmp_path / "a.txt", text_unit="paragraph")] == \
        ["first line", "second line\nthird"]
    assert [e.text for e in load_examples(tmp_path / "a.txt", text_unit="file")] == \
        ["first line\n\n  second line  \nthird"]
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("bee\n", encoding="utf-8")
    (folder / "sub" / "c.md").write_text("sea\n", encoding="utf-8")
    (folder / ".hidden.txt").write_text("hidden\n", encoding="utf-8")
    (folder / "notes.bin").write_bytes(b"\0\1")
    write_jsonl(folder / "a.jsonl", RECORDS[:1])
    examples = load_examples(folder)
    assert examples.format == "dir"
    assert [e.text for e in examples] == ["the zebrafish swims", "bee", "sea"]  # sorted file order
    assert len(examples) == 3 and [e.text for e in examples] == [e.text for e in examples]


def test_labels_are_normalized():
    assert [normalize_label(v) for v in (1, "1", " 2 ", 3.0, "-1", True, None, "", " pos ")] == \
        [1, 1, 2, 3, -1, 1, None, None, "pos"]


def test_custom_fields_and_max(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", text="body", label="stars")
    examples = load_examples(path, text_field="body", label_field="stars")
    assert examples.take(2) == EXPECTED[:2]
    assert [e.label for e in load_examples(path, text_field="body")] == [None, None, None]


def put(path, content):
    """Write ``content`` (str or bytes) to ``path`` and return the path."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize("setup,match", [
    (lambda p: p / "missing.jsonl", "does not exist"),
    (lambda p: put(p / "empty.jsonl", "\n\n"), "no examples"),
    (lambda p: put(p / "empty.txt", ""), "no examples"),
    (lambda p: write_csv(p / "d.csv", text="body"), r"no 'text' column \(columns: label, body\).*--text-field"),
    (lambda p: write_jsonl(p / "d.jsonl", text="body"), r"line 1: no 'text' field.*--text-field"),
    (lambda p: put(p / "d.jsonl", '{"text": "ok"}\n{"text": \n'), "line 2: not valid JSON"),
    (lambda p: put(p / "d.jsonl", '["a"]\n'), "not an object"),
    (lambda p: put(p / "d.jsonl", '{"text": 3}\n'), "not text"),
    (lambda p: put(p / "d.txt", b"ok\n\xff\xfe\n"), "not UTF-8"),
    (lambda p: put(p / "d.json", "[]"), "cannot tell the format.*jsonl"),
    (lambda p: (p / "dir").mkdir() or p / "dir", "holds no"),
])
def test_bad_data_is_a_usage_error(tmp_path, setup, match):
    with pytest.raises(UsageError, match=match):
        load_examples(setup(tmp_path)).take()


def test_errors_do_not_quote_the_data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"secretword": "xyzzy-private"}\n', encoding="utf-8")
    with pytest.raises(UsageError) as info:
        load_examples(path).take()
    assert "xyzzy-private" not in str(info.value) and "secretword" in str(info.value)


def test_missing_optional_packages_are_named(tmp_path, monkeypatch):
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UsageError, match=r"'pyarrow'.*pip install pyarrow"):
        load_examples(tmp_path / "d.parquet")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UsageError, match=r"'datasets'.*pip install datasets"):
        load_examples(tmp_path / "ds")


_texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(str.strip)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_texts, st.one_of(st.integers(0, 9), st.sampled_from(["pos", "neg"]))),
                min_size=1, max_size=8))
def test_jsonl_and_csv_round_trip_any_text(tmp_path_factory, records):
    folder = tmp_path_factory.mktemp("rt")
    expected = [Example(text, label) for text, label in records]
    assert load_examples(write_jsonl(folder / "d.jsonl", records)).take() == expected
    assert load_examples(write_csv(folder / "d.csv", records)).take() == expected


def test_a_pipe_among_the_data_is_refused_never_opened(tmp_path):
    """A FIFO nobody writes to would block `train --data DIR` forever (as it did `add`)."""
    from modelgit.errors import UnsupportedFileError

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("one line\n")
    os.mkfifo(tmp_path / "data" / "b.txt")
    for path in (tmp_path / "data", tmp_path / "data" / "b.txt"):
        with pytest.raises(UnsupportedFileError, match="named pipe"):
            load_examples(path)
