"""Class labels of classification data: map them to head indices, the same way in training and
evaluation.

Labels are class *names*, also when they are spelled as numbers: man-page sections ``1 2 3 5 7
8`` are six classes named ``"1"`` ... ``"8"`` (numbered in numeric order), not indices into a
nine-way head with three classes that never occur. Labels ``0..n-1`` give the same numbering
either way. Numbers are read as head *indices* only when the user says so: with ``--num-labels``
(the head has that many classes and the labels index it), or when the base already is a
classifier, or a fixed list of names is given, that names no class with a number (``neg,pos``
with labels ``0``/``1``: the data numbers its classes). A model's labels are read back the same
way in evaluation (:func:`label_ids`).

Names are numbered in sorted order, unless the base already is a classifier that names them
all, whose numbering is then kept. A fixed list of class names (``train --labels``, or the
project's ``labels:`` in modelgit.yaml) overrides both: every adapter of a project then numbers
its classes the same way, whichever of them its data holds, so their heads can be merged.
"""

from __future__ import annotations

import re

from ..errors import UsageError

__all__ = ["label_mapping", "label_ids"]

_DEFAULT_NAME = re.compile(r"^LABEL_\d+$")
_NUMBER = re.compile(r"^-?\d+$")


def _numbers_are_names(names) -> bool:
    """Whether integer labels name classes of a model (or list) with these class names: it has
    a class spelled as a number (``"7"``); otherwise integers are indices into it."""
    return any(_NUMBER.match(str(name)) for name in names)


def _sort_key(label) -> tuple:
    return (0, label, "") if isinstance(label, int) else (1, 0, label)


def _fixed_mapping(labels: list, fixed: tuple[str, ...] | list[str]) -> dict[int, str]:
    """``id2label`` of a fixed list of class names; every label of the data must be one of them
    (integer labels are names when the list holds them all, else indices into the list)."""
    mapping = dict(enumerate(fixed))
    as_names = _numbers_are_names(fixed)
    unknown = sorted({str(label) for label in labels
                      if (label not in mapping if isinstance(label, int) and not as_names
                          else str(label) not in fixed)})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise UsageError(f"{len(unknown)} label(s) of the data are not in the fixed list of "
                         f"{len(fixed)} classes ({', '.join(fixed[:20])}): {shown}; add them to "
                         "--labels (or the project's `labels:` in modelgit.yaml) or fix the data")
    return mapping


def label_mapping(labels: list, num_labels: int | None = None,
                  base_id2label: dict[int, str] | None = None,
                  fixed: tuple[str, ...] | list[str] | None = None) -> dict[int, str]:
    """``id2label`` for a classifier trained on ``labels`` (normalized: ints or strs, no None).

    Args:
        fixed: class names in head order: the numbering, whatever classes the data holds.
    Raises:
        UsageError: unlabeled records, a mix of integer and string labels, negative labels,
            more classes than ``num_labels``, or a label that is not in ``fixed``.
    """
    missing = sum(1 for label in labels if label is None)
    if missing:
        raise UsageError(f"{missing} of {len(labels)} examples have no label: classification data "
                         "needs a label on every record (see --label-field), or use --task causal_lm")
    if fixed:
        return _fixed_mapping(labels, fixed)
    kinds = {type(label) for label in labels}
    named_base = bool(base_id2label) and not all(_DEFAULT_NAME.match(v) for v in base_id2label.values())
    indices = int in kinds and (num_labels is not None or (
        named_base and not _numbers_are_names(base_id2label.values())))
    if indices and len(kinds) > 1:
        raise UsageError("the labels mix numbers and names: use class indices (0, 1, ...) or "
                         "class names throughout")
    if indices:  # the user numbers the head's classes (see above)
        low, high = min(labels), max(labels)
        if low < 0:
            raise UsageError(f"label {low} is negative: integer labels are class indices 0..n-1")
        count = num_labels or max(high + 1, 2)
        if high >= count:
            raise UsageError(f"label {high} does not fit num_labels={count}: raise --num-labels "
                             f"to at least {high + 1}")
        named = base_id2label if base_id2label and len(base_id2label) == count else {}
        return {i: named.get(i, str(i)) for i in range(count)}
    # numbers are names, in numeric order: ["1", "2", "10"], not ["1", "10", "2"]
    names = [str(n) for n in sorted(set(labels), key=_sort_key)]
    if named_base:
        by_name = {v: k for k, v in base_id2label.items()}
        if all(name in by_name for name in names) and (num_labels in (None, len(base_id2label))):
            return dict(sorted(base_id2label.items()))
    count = num_labels or max(len(names), 2)
    if len(names) > count:
        raise UsageError(f"the data has {len(names)} classes but num_labels is {count}: "
                         f"raise --num-labels to {len(names)} or leave it unset")
    mapping = dict(enumerate(names))
    mapping.update({i: f"LABEL_{i}" for i in range(len(names), count)})
    return mapping


def label_ids(labels: list, id2label: dict[int, str], where: str = "the data") -> list[int]:
    """Head indices of ``labels`` under a model's ``id2label``: an integer label is a class
    name when the model names a class with a number (``7`` is the class ``"7"``), else an index.

    Raises:
        UsageError: a label the model has no class for.
    """
    label2id = {v: k for k, v in id2label.items()}
    as_names = _numbers_are_names(id2label.values())
    out, unknown = [], set()
    for label in labels:
        if label is None:
            raise UsageError(f"{where}: a record has no label: every evaluation record needs one")
        if isinstance(label, int) and as_names:
            label = str(label)
        if isinstance(label, int):
            if not 0 <= label < len(id2label):
                unknown.add(str(label))
            out.append(label)
        elif label in label2id:
            out.append(label2id[label])
        else:
            unknown.add(label)
    if unknown:
        raise UsageError(f"{where}: {len(unknown)} label(s) the model has no class for (its classes: "
                         f"{len(id2label)}): evaluate with data labelled like the training data")
    return out
