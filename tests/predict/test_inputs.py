"""Input files read batch by batch: exact batch boundaries from any batch on, in every format;
a row group or block never decides where a batch ends."""

from __future__ import annotations

import pyarrow as pa
import pytest

from predict_texts import TEXTS

from modelgit.errors import FileChangedError, UnsupportedFileError, UsageError
from modelgit.predict.inputs import open_input


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl"])
def test_batches_hold_exact_rows_from_any_batch_on(inputs, kind):
    with open_input(inputs[kind], id_column="key") as source:
        assert source.columns == ["key", "text", "other"]
        assert source.rows == (len(TEXTS) if kind == "parquet" else None)
        assert source.id_type == pa.int64()
        batches = list(source.batches(5))
    assert [b.index for b in batches] == [0, 1, 2, 3, 4]
    assert [b.first for b in batches] == [0, 5, 10, 15, 20]
    assert [t for b in batches for t in b.texts] == TEXTS
    assert [k for b in batches for k in b.ids.to_pylist()] == [1000 + i for i in range(len(TEXTS))]
    with open_input(inputs[kind]) as source:
        rest = list(source.batches(5, start_batch=3))
    assert [b.first for b in rest] == [15, 20] and rest[0].texts == TEXTS[15:20] and rest[0].ids is None


def test_tsv_and_a_forced_format(tmp_path):
    path = tmp_path / "in.data"
    path.write_text("text\tn\nhello there\t1\n\t2\n\"\"\t3\n")
    with pytest.raises(UsageError, match="cannot tell the format"):
        open_input(str(path))
    with open_input(str(path), "tsv") as source:
        (batch,) = source.batches(10)
    assert batch.texts == ["hello there", None, ""]  # an empty cell is a null; "" is ""
    with pytest.raises(UsageError, match="unknown input format 'tvs' \\(did you mean 'tsv'\\?\\)"):
        open_input(str(path), "tvs")


def test_pipes_are_refused_and_a_file_changed_while_read_is_noticed(tmp_path, inputs):
    import os
    import shutil

    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(UnsupportedFileError, match="named pipe"):
        open_input(str(fifo))
    copy = tmp_path / "copy.jsonl"
    shutil.copy(inputs["jsonl"], copy)
    with open_input(str(copy)) as source:
        batches = source.batches(100)
        with open(copy, "a", encoding="utf-8") as handle:
            handle.write('{"text": "one more"}\n')
        with pytest.raises(FileChangedError, match="changed while it was being read"):
            list(batches)
