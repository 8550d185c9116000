"""Load a base model, its tokenizer and (optionally) a LoRA adapter from local directories only.

Nothing is downloaded: ``HF_HUB_OFFLINE`` is set and every ``from_pretrained`` call gets
``local_files_only=True``. Models are loaded in float32 for CPU training and evaluation.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ..errors import FormatError, UsageError  # noqa: E402
from ..untrusted import load_json_file, text_problem  # noqa: E402
from .pooling import POOLINGS, mean_pooling_problem, set_mean_pooling  # noqa: E402

__all__ = ["LABELS_FILE", "labels_problems", "architecture_task", "check_task", "supported_tasks",
           "load_tokenizer", "load_model", "load_another_adapter",
           "quiet_transformers",
           "read_labels", "read_pooling", "shared_pooling", "write_labels"]

#: written beside a classification adapter: the classes its head was trained on
LABELS_FILE = "labels.json"


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' own progress bars, info logs and deprecation warnings for a while
    (modelgit shows its own progress)."""
    from transformers.utils import logging as hf_logging

    bars_were_off, verbosity = hf_logging.is_progress_bar_enabled() is False, hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if not bars_were_off:
            hf_logging.enable_progress_bar()


def _short(exc: Exception) -> str:
    """The exception's type and first line (two when the first only introduces the second)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text[:300]}"


def _read_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise UsageError(f"{model_dir!r} has no config.json: give a transformers model directory "
                         "(written by save_pretrained)")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def architecture_task(model_dir: str) -> str | None:
    """``classification`` / ``causal_lm`` when the base's ``architectures`` tell, else None."""
    names = _read_config(model_dir).get("architectures") or []
    if any(n.endswith("ForSequenceClassification") for n in names):
        return "classification"
    if any(n.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for n in names):
        return "causal_lm"
    return None


def supported_tasks(model_dir: str) -> tuple[str, ...]:
    """The tasks the model in ``model_dir`` can be trained or evaluated for.

    ``causal_lm`` needs a trained next-token head: an architecture named ``*ForCausalLM``,
    ``*LMHeadModel`` or ``*ForConditionalGeneration``, or a bare decoder whose head transformers
    ties to its embeddings (a model type with a causal-LM class and no masked-LM one, e.g. a
    ``GPT2Model``). An encoder (``BertModel``, ``*ForMaskedLM``) or a sequence classifier has
    none: its "causal LM" would be a random head over a model that sees the future tokens.
    ``classification`` needs only a model type transformers has a sequence classifier for.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)

    config = _read_config(model_dir)
    names, kind = config.get("architectures") or [], config.get("model_type", "")
    tasks = []
    headed = any(n.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for n in names)
    bare_decoder = (not any(n.endswith(("ForSequenceClassification", "ForMaskedLM")) for n in names)
                    and kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                    and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    if headed or bare_decoder:
        tasks.append("causal_lm")
    if kind in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES or any(
            n.endswith("ForSequenceClassification") for n in names):
        tasks.append("classification")
    return tuple(tasks)


def check_task(model_dir: str, task: str) -> None:
    """Raise a UsageError when the model in ``model_dir`` cannot do ``task``, naming the tasks
    it can (see :func:`supported_tasks`)."""
    tasks = supported_tasks(model_dir)
    if task in tasks:
        return
    arch = ", ".join(_read_config(model_dir).get("architectures") or []) or \
        repr(_read_config(model_dir).get("model_type", "?"))
    can = (f"it can do: {', '.join(tasks)}" if tasks else
           "it can do neither causal_lm nor classification")
    raise UsageError(f"{model_dir!r} ({arch}) cannot do task {task!r}: {can}"
                     + (f" (use --task {tasks[0]})" if len(tasks) == 1 else ""))


def model_type(model_dir: str) -> str:
    return _read_config(model_dir).get("model_type", "")


def load_tokenizer(model_dir: str):
    """The tokenizer saved with the base, with a pad token (eos or unk when it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"cannot load a tokenizer from {model_dir!r} ({_short(exc)}): save the "
                         "tokenizer beside the model with tokenizer.save_pretrained(dir)") from None
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise UsageError(f"the tokenizer of {model_dir!r} has no pad, eos or unk token to pad "
                             "batches with: add a pad token and save it again")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "right"
    return tokenizer


def _labels_file(adapter_dir: str | None) -> dict | None:
    """An adapter's labels.json, checked (read as untrusted), or None when it has none."""
    if not adapter_dir or not os.path.isfile(os.path.join(adapter_dir, LABELS_FILE)):
        return None
    path = os.path.join(adapter_dir, LABELS_FILE)
    data = load_json_file(path, max_bytes=MAX_LABELS_BYTES)
    problems = labels_problems(data)
    if problems:
        raise FormatError(f"{path}: " + "; ".join(problems))
    return data


def read_labels(adapter_dir: str | None) -> dict[int, str] | None:
    """The ``id2label`` a classification adapter was trained with, if it recorded one."""
    data = _labels_file(adapter_dir)
    return None if data is None else {int(k): v for k, v in data["id2label"].items()}


def read_pooling(adapter_dir: str | None) -> str:
    """How a classification adapter's head reads the encoder: ``cls`` (the first token, as
    transformers' classifiers do; also when it says nothing) or ``mean`` (see :mod:`.pooling`)."""
    data = _labels_file(adapter_dir)
    return (data or {}).get("pooling", "cls")


#: a classifier's labels file: at most this many bytes and classes
MAX_LABELS_BYTES = 1024 * 1024
MAX_LABELS = 10_000


def shared_pooling(adapter_dirs: dict[str, str]) -> str:
    """The pooling every classification adapter of a library names (:func:`read_pooling`):
    one base model serves them all, so they must agree.

    Raises:
        UsageError: they differ (the message names which is which).
    """
    poolings = {name: read_pooling(directory) for name, directory in adapter_dirs.items()}
    if len(set(poolings.values())) > 1:
        mean = ", ".join(sorted(n for n, p in poolings.items() if p == "mean"))
        first = ", ".join(sorted(n for n, p in poolings.items() if p != "mean"))
        raise UsageError(f"the adapters read the encoder differently (mean pooling: {mean}; the "
                         f"first token: {first}): one base model serves them all, so keep "
                         "classifiers of one kind together (`modelgit train --classifier`)")
    return next(iter(poolings.values()), "cls")


def labels_problems(data) -> list[str]:
    """What is wrong with the parsed contents of a ``labels.json`` (an adapter's file: read as
    untrusted): ``{"id2label": {"0": "name", ...}}`` with at most 10,000 short names."""
    labels = data.get("id2label") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        return ["expected {\"id2label\": {\"0\": \"label\", ...}}"]
    if len(labels) > MAX_LABELS:
        return [f"{len(labels)} labels, over the limit of {MAX_LABELS}"]
    bad = [k for k, v in labels.items()
           if not (k.isdigit() and len(k) <= 6) or text_problem(v, "label", 200) is not None]
    if bad:
        return [f"id2label {bad[0][:20]!r}: keys must be class numbers and values short plain names"]
    if data.get("pooling", "cls") not in POOLINGS:
        return [f"pooling {str(data['pooling'])[:20]!r}: expected one of {', '.join(POOLINGS)}"]
    return []


def write_labels(out_dir: str, id2label: dict[int, str], pooling: str = "cls") -> None:
    """Write labels.json; ``pooling`` other than transformers' ``cls`` is recorded."""
    data = {"id2label": {str(k): v for k, v in sorted(id2label.items())}}
    if pooling != "cls":
        data["pooling"] = pooling
    with open(os.path.join(out_dir, LABELS_FILE), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_model(model_dir: str, task: str, id2label: dict[int, str] | None = None,
               adapter_dir: str | None = None, pad_token_id: int | None = None,
               pooling: str | None = None):
    """A float32 base model for ``task`` (+ the PEFT adapter in ``adapter_dir``), on the CPU.

    Args:
        id2label: for classification: the classes of the head (a new head is initialised when
            the base has none or one of another size). Defaults to the adapter's labels.json.
        pooling: for classification: ``mean`` adds the constant mean-pooling layer and pooler
            (:mod:`.pooling`). Defaults to the adapter's labels.json (else ``cls``).
        pad_token_id: recorded in the model config (sequence classifiers need it to find the
            last token of decoder-only models).
    Raises:
        UsageError: the directory does not hold a model for that task, or the adapter does not
            fit the base.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict = {"local_files_only": True, "dtype": torch.float32}
    if task == "classification":
        id2label = id2label or read_labels(adapter_dir)
        pooling = pooling or read_pooling(adapter_dir)
        if pooling == "mean":
            base_config = _read_config(model_dir)
            problem = mean_pooling_problem(base_config)
            if problem:
                raise UsageError(f"{model_dir!r}: {problem}")
            kwargs["num_hidden_layers"] = base_config["num_hidden_layers"] + 1
        if id2label:
            kwargs.update(num_labels=len(id2label), id2label=id2label,
                          label2id={v: k for k, v in id2label.items()}, ignore_mismatched_sizes=True)
        auto = AutoModelForSequenceClassification
    elif task == "causal_lm":
        auto = AutoModelForCausalLM
    else:
        raise UsageError(f"unknown task {task!r}: use causal_lm or classification")
    check_task(model_dir, task)
    try:
        with quiet_transformers():
            model = auto.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot load {model_dir!r} as a {task} model ({_short(exc)}): "
                         "check the directory and --task") from None
    if task == "classification" and pooling == "mean":
        set_mean_pooling(model, base_config)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if adapter_dir:
        with quiet_transformers():
            model = _attach_adapter(model, adapter_dir)
    model.eval()
    return model


def load_another_adapter(model, adapter_dir: str, name: str) -> None:
    """``model.load_adapter`` (a PeftModel's second or later adapter, not trainable) without
    PEFT 0.22's false alarm: it counts the adapters loaded before as this one's "missing adapter
    keys" (their weights stay as they were: tests/adapters/test_probe_classifier.py)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Found missing adapter keys")
        model.load_adapter(adapter_dir, adapter_name=name, is_trainable=False)


def _attach_adapter(model, adapter_dir: str):
    from peft import PeftModel

    if not os.path.isfile(os.path.join(adapter_dir, "adapter_config.json")):
        raise FormatError(f"{adapter_dir!r} has no adapter_config.json: not a PEFT adapter directory")
    if not os.path.isfile(os.path.join(adapter_dir, "adapter_model.safetensors")):
        raise FormatError(f"{adapter_dir!r} has no adapter_model.safetensors (pickled adapters are "
                          "not loaded: convert it to safetensors)")
    try:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UsageError(f"the adapter {adapter_dir!r} does not fit this base ({_short(exc)}): "
                         "was it trained on another base model?") from None
