"""Task-head adapters (sequence classifiers...) merged onto a bare base model.

``modelgit train --task classification`` on an encoder trains the *task model*
(``BertForSequenceClassification``): its adapter names the body's modules under the task
model's ``base_model_prefix`` (``bert.encoder...``) and saves the new head in PEFT's
``modules_to_save`` (``classifier.weight``). A base directory often holds the bare model
(``BertModel``: ``encoder...``, no head). This module maps the names both ways by
architecture (the prefix is the one transformers' task class declares, never a hard-coded
string) and says what the heads are: tensors the adapter brings that no base has.

A merge of such adapters states a rule for the heads (the recipe's ``heads:``):

* ``average`` — one head, the mean of the adapters' heads; the adapters must name the same
  classes in the same order (their ``labels.json``). The output is the task model: the body
  under the prefix, the head, and a config.json naming the task architecture and the classes,
  which ``modelgit eval`` and transformers load as a classifier.
* ``keep`` — the body is merged and each adapter's head is kept as it is, in
  ``heads.safetensors`` (tensors ``<k>/<name>``) with ``heads.json`` (per head: the model spec
  and its ``id2label``): for adapters whose label sets differ (a router picks the head).

Without ``heads:`` the rule is ``average`` when the classes agree; when they differ the merge
stops with an error naming the differing classes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..errors import FormatError

__all__ = ["HEAD_RULES", "TaskModel", "task_model", "task_model_of", "base_model_type", "align_name", "labels_of", "label_problems",
           "task_config", "heads_files", "model_config"]

HEAD_RULES = ("average", "keep")

# PEFT task types -> the transformers auto mapping of that task's model classes
_TASK_MAPPINGS = {"SEQ_CLS": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
                  "TOKEN_CLS": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
                  "QUESTION_ANS": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"}


@dataclass(frozen=True)
class TaskModel:
    """The transformers class an adapter was trained on and the prefix of its body's names."""

    architecture: str  # e.g. BertForSequenceClassification
    prefix: str  # e.g. bert (the class's base_model_prefix)


def model_config(directory: str) -> dict:
    """A model directory's config.json (read as untrusted, at most 4 MiB), or {}."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return {}
    from ..untrusted import load_json_file

    try:
        data = load_json_file(path, max_bytes=4 * 1024 * 1024)
    except FormatError:
        return {}
    return data if isinstance(data, dict) else {}


def task_model(base_dir: str, adapter_config: dict) -> TaskModel | None:
    """The task model behind an adapter of ``adapter_config`` trained on the base in
    ``base_dir``: from the adapter's PEFT ``task_type`` and the base's ``model_type``, the
    class transformers builds for that task and its ``base_model_prefix``. None when the
    adapter has no task head or transformers knows no such class."""
    return task_model_of(model_config(base_dir).get("model_type") if base_dir else None, adapter_config)


def base_model_type(base_dir: str) -> str | None:
    """The ``model_type`` of the model in ``base_dir`` (its config.json), or None."""
    kind = model_config(base_dir).get("model_type")
    return kind if isinstance(kind, str) else None


def task_model_of(model_type: str | None, adapter_config: dict) -> TaskModel | None:
    """:func:`task_model` from the base's ``model_type``."""
    if not isinstance(adapter_config, dict):
        return None
    mapping_name = _TASK_MAPPINGS.get(str(adapter_config.get("task_type") or ""))
    if mapping_name is None or not isinstance(model_type, str):
        return None
    import transformers
    from transformers.models.auto import modeling_auto

    architecture = getattr(modeling_auto, mapping_name).get(model_type)
    cls = getattr(transformers, architecture, None) if architecture else None
    prefix = getattr(cls, "base_model_prefix", "") if cls is not None else ""
    if not prefix:
        return None
    return TaskModel(architecture, prefix)


def align_name(name: str, base_names, prefix: str | None) -> str | None:
    """The base tensor an adapter's tensor ``name`` (task-model naming) stands for.

    ``bert.encoder.x`` is ``encoder.x`` of a bare base, ``encoder.x`` is ``bert.encoder.x`` of
    a base saved as the task model; a name the base has is itself. None: the base has no such
    tensor (a new task head, or the wrong base)."""
    if name in base_names:
        return name
    if prefix:
        head = prefix + "."
        if name.startswith(head) and name[len(head):] in base_names:
            return name[len(head):]
        if head + name in base_names:
            return head + name
    return None


def labels_of(adapter_dir: str) -> dict[int, str] | None:
    """The classes a classification adapter was trained on (its ``labels.json``), or None.

    Raises:
        FormatError: a labels.json that is not a valid one (read as untrusted input).
    """
    from ..adapters.loading import read_labels

    return read_labels(adapter_dir)


def _names(labels: dict[int, str]) -> str:
    return ", ".join(labels[k] for k in sorted(labels))


def label_problems(labelled: list[tuple[str, dict[int, str] | None]], new_heads: bool = True) -> list[str]:
    """Why heads of these adapters cannot be averaged: ``(spec, id2label)`` per adapter with a
    head. Empty when every adapter names the same classes in the same order. ``new_heads``
    false: the heads replace a classifier base's own (``heads: keep`` is no way out then)."""
    known = [(spec, labels) for spec, labels in labelled if labels]
    if len(known) < len(labelled):
        missing = [spec for spec, labels in labelled if not labels]
        return [f"{', '.join(missing)} carry a task head but no labels.json: modelgit cannot check "
                "that their classes agree (retrain with `modelgit train`, which writes it)"]
    if not known:
        return []
    first_spec, first = known[0]
    problems = []
    for spec, labels in known[1:]:
        if labels == first:
            continue
        only_first = sorted(set(first.values()) - set(labels.values()))
        only_this = sorted(set(labels.values()) - set(first.values()))
        if only_first or only_this:
            detail = (f"only in {first_spec}: {', '.join(only_first) or '-'}; "
                      f"only in {spec}: {', '.join(only_this) or '-'}")
        else:
            detail = f"same classes in another order ({_names(first)} vs {_names(labels)})"
        same = "every adapter with the same `--labels` list"
        advice = (f"Give the recipe `heads: keep` (each adapter's head is kept, for a router) or "
                  f"train {same}" if new_heads else f"Train {same}")  # a replaced head: no keep
        problems.append(f"the task heads name different classes ({detail}): their heads cannot be "
                        f"{'averaged' if new_heads else 'merged'}. {advice}")
    return problems


def task_config(base_dir: str, task: TaskModel, labels: dict[int, str] | None,
                pooling: str = "cls") -> bytes | None:
    """config.json of the merged task model: the base's, naming the task architecture and the
    classes (and, for mean pooling, one layer more: :mod:`modelgit.adapters.pooling`). None when
    the base has no config.json."""
    config = model_config(base_dir)
    if not config:
        return None
    config["architectures"] = [task.architecture]
    if pooling == "mean":
        from ..adapters.pooling import CONFIG_KEY

        config["num_hidden_layers"] += 1
        config[CONFIG_KEY] = "mean"  # what serve's and predict's embeddings read (encoder_output)
    if labels:
        config["id2label"] = {str(k): v for k, v in sorted(labels.items())}
        config["label2id"] = {v: k for k, v in sorted(labels.items())}
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def heads_files(heads: list[tuple[str, dict[int, str] | None, dict]]) -> dict[str, bytes]:
    """``heads.safetensors`` and ``heads.json`` of a merge that keeps each adapter's head.

    Args:
        heads: per adapter: (model spec, id2label or None, {tensor name: tensor}).
    """
    from safetensors.torch import save

    tensors, entries = {}, []
    for k, (spec, labels, parts) in enumerate(heads):
        for name, tensor in sorted(parts.items()):
            tensors[f"{k}/{name}"] = tensor.contiguous()
        entries.append({"index": k, "model": spec, "tensors": sorted(parts),
                        "id2label": {str(i): v for i, v in sorted((labels or {}).items())} or None})
    return {"heads.safetensors": save(tensors),
            "heads.json": (json.dumps({"heads": entries}, indent=2, sort_keys=True) + "\n").encode()}
