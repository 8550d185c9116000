"""Small pieces of training: label numbering and the seeded batch order."""

from __future__ import annotations

import pytest
import torch

from modelgit.adapters._batches import batch_plan, collate
from modelgit.adapters.labels import label_ids, label_mapping
from modelgit.errors import UsageError


def test_label_mapping():
    assert label_mapping(["pos", "neg", "pos"]) == {0: "neg", 1: "pos"}
    assert label_mapping([0, 2, 1]) == {0: "0", 1: "1", 2: "2"}
    assert label_mapping([1, 1]) == {0: "1", 1: "LABEL_1"}  # a classifier has at least two classes
    assert label_mapping(["b", "a"], num_labels=3) == {0: "a", 1: "b", 2: "LABEL_2"}
    # a base that already names its classes keeps its numbering
    assert label_mapping(["neg", "pos"], base_id2label={0: "pos", 1: "neg"}) == {0: "pos", 1: "neg"}
    assert label_mapping(["neg"], base_id2label={0: "LABEL_0", 1: "LABEL_1"}) == {0: "neg", 1: "LABEL_1"}
    for labels, kw, match in (([0, "a"], {"num_labels": 2}, "mix"),
                              ([-1, 0], {"num_labels": 2}, "negative"), (["a", None], {}, "1 of 2")):
        with pytest.raises(UsageError, match=match):
            label_mapping(labels, **kw)
    with pytest.raises(UsageError, match="raise --num-labels to at least 4"):
        label_mapping([3, 0], num_labels=2)
    assert label_ids(["pos", 0, "neg"], {0: "neg", 1: "pos"}) == [1, 0, 0]
    with pytest.raises(UsageError, match="1 label"):
        label_ids([5], {0: "neg", 1: "pos"})


def test_labels_spelled_as_numbers_are_class_names():
    """Man-page sections 1 2 3 5 7 8 are six classes, not indices into a nine-way head (issue 17)."""
    sections = [1, 8, 2, 3, 5, 7, 10, 1]
    id2label = label_mapping(sections)
    assert id2label == {0: "1", 1: "2", 2: "3", 3: "5", 4: "7", 5: "8", 6: "10"}  # numeric order
    assert label_ids(sections, id2label) == [0, 5, 1, 2, 3, 4, 6, 0]
    assert label_ids(["7"], id2label) == [4]  # "7" in a CSV is the same class
    with pytest.raises(UsageError, match="1 label"):  # not read as the index 4 ("7")
        label_ids([4], id2label)
    # a fixed list that names its classes with numbers: numbers are those names
    fixed = ("1", "2", "3", "5", "7", "8")
    assert label_mapping([7, 8, 1], fixed=fixed) == dict(enumerate(fixed))
    assert label_ids([7, 8, 1], dict(enumerate(fixed))) == [4, 5, 0]
    with pytest.raises(UsageError, match="not in the fixed list"):
        label_mapping([4], fixed=fixed)
    # labels 0..n-1 number the classes as before; numbers and names may mix
    assert label_mapping([2, 0, 1]) == {0: "0", 1: "1", 2: "2"}
    assert label_mapping([1, "other"]) == {0: "1", 1: "other"}


def test_numbers_are_indices_when_the_user_says_so():
    assert label_mapping([1, 5], num_labels=6) == {i: str(i) for i in range(6)}
    assert label_ids([1, 5], {i: str(i) for i in range(6)}) == [1, 5]
    # a fixed list or a base of named classes, numbered by the data
    assert label_mapping([0, 1], fixed=("neg", "pos")) == {0: "neg", 1: "pos"}
    assert label_ids([1, 0], {0: "neg", 1: "pos"}) == [1, 0]
    assert label_mapping([1, 0], base_id2label={0: "neg", 1: "pos"}) == {0: "neg", 1: "pos"}


def test_batch_plan_is_seeded_and_covers_every_epoch():
    plan = batch_plan(10, 4, seed=0, steps=None, epochs=2)
    assert [len(b) for b in plan] == [4, 4, 4, 4, 4]
    flat = [i for b in plan for i in b]
    assert sorted(flat[:10]) == sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # a fresh permutation per epoch
    assert batch_plan(10, 4, 0, None, 2) == plan and batch_plan(10, 4, 1, None, 2) != plan
    assert len(batch_plan(3, 2, 0, steps=7, epochs=None)) == 7


def test_collate_masks_padding_for_causal_lm():
    batch = collate([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert torch.equal(collate([[1], [2, 3]], 0, labels=[1, 0])["labels"], torch.tensor([1, 0]))



def test_skip_steps_must_not_be_negative(tmp_path):
    # the order it continues is tested where rounds use it (tests/federate/test_client.py)
    from modelgit.adapters import TrainConfig

    config = TrainConfig(base=str(tmp_path), data="d", output="o", skip_steps=-1)
    assert any(p.startswith("skip_steps is -1") for p in config.problems())
    with pytest.raises(UsageError, match="skip_steps is -1"):
        config.validate()
