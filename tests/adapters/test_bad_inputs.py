"""Every way a training run can be set up wrong ends in a UsageError that says what to do."""

from __future__ import annotations

import pytest

from modelgit.adapters import TrainConfig, train
from modelgit.errors import UsageError


def run(base, data, tmp_path, **extra):
    return train(TrainConfig(base=base, data=str(data), output=str(tmp_path / "out"), steps=1,
                             threads=1, **extra))


def test_missing_data_file(lm_base, tmp_path):
    with pytest.raises(UsageError, match="does not exist: check the path"):
        run(lm_base, tmp_path / "nope.jsonl", tmp_path)


def test_empty_data(lm_base, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UsageError, match="no examples.*at least one non-empty record"):
        run(lm_base, tmp_path / "empty.txt", tmp_path)


def test_csv_without_the_text_column(lm_base, tmp_path):
    (tmp_path / "d.csv").write_text("body,label\nhello,1\n")
    with pytest.raises(UsageError, match=r"no 'text' column \(columns: body, label\): pass --text-field"):
        run(lm_base, tmp_path / "d.csv", tmp_path)


def test_unknown_target_module_lists_the_real_ones(lm_base, lm_data, tmp_path):
    with pytest.raises(UsageError, match=r"c_attn not found in this llama model: pass --targets.*q_proj"):
        run(lm_base, lm_data, tmp_path, target_modules=("c_attn",))
    assert not (tmp_path / "out").exists()


def test_texts_too_short_for_a_language_model(lm_base, tmp_path):
    (tmp_path / "d.txt").write_text("cat\ndog\n")
    with pytest.raises(UsageError, match="shorter than 2 tokens"):
        run(lm_base, tmp_path / "d.txt", tmp_path, task="causal_lm", max_length=1)


def test_classification_needs_labels_everywhere(cls_base, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad"}\n')
    with pytest.raises(UsageError, match="1 of 2 examples have no label"):
        run(cls_base, tmp_path / "d.jsonl", tmp_path)


def test_too_many_classes_for_num_labels(cls_base, tmp_path):
    (tmp_path / "d.csv").write_text("text,label\ngood,a\nbad,b\nso so,c\n")
    with pytest.raises(UsageError, match="3 classes but num_labels is 2"):
        run(cls_base, tmp_path / "d.csv", tmp_path, num_labels=2)


def test_every_bad_setting_is_reported_at_once(lm_data, tmp_path):
    config = TrainConfig(base=str(tmp_path / "nobase"), data=lm_data, output=str(tmp_path / "o"),
                         rank=0, lr=-1.0, dropout=1.5, steps=0, task="regression", full=True,
                         target_modules=("q_proj",))
    with pytest.raises(UsageError) as info:
        train(config)
    message = str(info.value)
    for part in ("rank is 0", "lr is -1.0", "dropout is 1.5", "steps is 0", "task 'regression'",
                 "target_modules was given with full=True", "is not a directory"):
        assert part in message


def test_a_base_without_weights(tmp_path, lm_data):
    (tmp_path / "base").mkdir()
    with pytest.raises(UsageError, match="no config.json"):
        run(str(tmp_path / "base"), lm_data, tmp_path)
