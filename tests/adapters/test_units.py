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
    assert label_mapping([1, 1]) == {0: "0", 1: "1"}  # a classifier has at least two classes
    assert label_mapping(["b", "a"], num_labels=3) == {0: "a", 1: "b", 2: "LABEL_2"}
    # a base that already names its classes keeps its numbering
    assert label_mapping(["neg", "pos"], base_id2label={0: "pos", 1: "neg"}) == {0: "pos", 1: "neg"}
    assert label_mapping(["neg"], base_id2label={0: "LABEL_0", 1: "LABEL_1"}) == {0: "neg", 1: "LABEL_1"}
    for labels, match in (([0, "a"], "mix"), ([-1, 0], "negative"), (["a", None], "1 of 2")):
        with pytest.raises(UsageError, match=match):
            label_mapping(labels)
    with pytest.raises(UsageError, match="raise --num-labels to at least 4"):
        label_mapping([3, 0], num_labels=2)
    assert label_ids(["pos", 0, "neg"], {0: "neg", 1: "pos"}) == [1, 0, 0]
    with pytest.raises(UsageError, match="1 label"):
        label_ids([5], {0: "neg", 1: "pos"})


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
