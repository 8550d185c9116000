"""`TrainConfig`: every setting of a training run, typed, frozen, validated in one place.

The CLI derives its ``modelgit train`` flags from these fields (names, types, defaults and the
``help`` metadata), so a new setting is added here once.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Literal

from ..data import TEXT_UNITS
from ..errors import UsageError

__all__ = ["TASKS", "CLASSIFIERS", "TrainConfig"]

TASKS = ("causal_lm", "classification")
CLASSIFIERS = ("auto", "tuned", "probe")  # train --classifier (see modelgit.adapters.probe)


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class TrainConfig:
    """A LoRA (or, with ``full``, whole-model) training run on local data."""

    base: str = field(metadata={"help": "base model: a local transformers directory",
                                "positional": True})
    data: str = field(metadata={"help": "training data: .jsonl, .csv, .tsv, .parquet, .txt, a "
                                "directory of them, or a saved `datasets` directory", "required": True})
    output: str = field(metadata={"help": "directory to write (adapter + data_card.json + "
                                  "metrics.json + training_config.json)", "flag": "-o",
                                  "required": True})
    task: Literal["causal_lm", "classification"] | None = _opt(
        None, "causal_lm or classification (default: classification when the base is a "
        "sequence classifier or the data has labels, else causal_lm)")
    rank: int = _opt(8, "LoRA rank r")
    alpha: float = _opt(16.0, "LoRA alpha (the update is scaled by alpha / rank)")
    dropout: float = _opt(0.0, "LoRA dropout")
    target_modules: tuple[str, ...] | None = _opt(
        None, "comma-separated module names to adapt, or all-linear (default: per architecture, "
        "e.g. q_proj,v_proj for llama, c_attn for gpt2, query,value for bert)", flag="--targets")
    steps: int | None = _opt(None, "optimizer steps (cycles through the data; overrides --epochs)")
    epochs: int | None = _opt(None, "passes over the data (default 1 when --steps is not given)")
    lr: float | None = _opt(None, "AdamW learning rate (default: 2e-4 for a causal LM, 1e-3 for "
                            "a classifier; whole-model --full runs usually want ~1e-5)")
    head_lr: float | None = _opt(None, "learning rate of a classifier's new head (default 5e-3; "
                                 "see modelgit.adapters.defaults)")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    max_grad_norm: float = _opt(1.0, "clip the gradient norm to this (0: no clipping)")
    batch_size: int = _opt(4, "examples per step")
    max_length: int = _opt(256, "truncate examples to this many tokens")
    seed: int = _opt(0, "seed of the initialisation, data order and dropout")
    threads: int | None = _opt(None, "CPU threads (default: torch's; 1 is fastest for tiny "
                               "models and on a busy machine)")
    skip_steps: int = _opt(0, "start the seed's data order this many steps in (continue a run's "
                           "pass over the data, as each round of `modelgit federate` does)")
    init_adapter: str | None = _opt(None, "continue training this LoRA adapter directory instead of "
                                    "starting a new one (its rank and targets apply), e.g. after "
                                    "`modelgit rebase`")
    save_every: int | None = _opt(
        None, "also keep the adapter every N steps, as OUTPUT/checkpoint-N (PEFT adapter "
        "directories, named as transformers' Trainer names them), to evaluate or continue from "
        "any of them; the run's last step is OUTPUT itself; with skip_steps, N counts the "
        "steps skipped too")
    classifier: Literal["auto", "tuned", "probe"] = _opt(
        "auto", "which classifier a classification run writes: tuned (the LoRA and head trained "
        "by these steps), probe (no training: logistic regression on the base's mean-pooled "
        "embeddings, read by a mean-pooling layer; BERT encoders), or auto (both, then the probe "
        "unless held-out data shows the tuned one ahead by more than chance)")
    full: bool = _opt(False, "train every weight, no LoRA (maintainers' continued pretraining); "
                      "writes a whole model")
    text_field: str = _opt("text", "text column / key of the data")
    label_field: str = _opt("label", "label column / key of classification data")
    text_unit: Literal["line", "paragraph", "file"] = _opt(
        "line", "how .txt files become examples: line, paragraph or file")
    num_labels: int | None = _opt(None, "number of classes (default: from the data's labels)")
    labels: tuple[str, ...] | None = _opt(
        None, "the class names in head order, e.g. negative,neutral,positive: fixes the numbering "
        "so that adapters trained on different subsets of the classes share one head layout "
        "(default: the project's `labels:` in modelgit.yaml when the base is in a modelgit "
        "repository, else numbered from the data)")
    validation: str | None = _opt(
        None, "held-out data (same format and fields as --data): its loss before and after "
        "training is reported")
    max_examples: int | None = _opt(None, "use only the first N examples of the data")
    overwrite: bool = _opt(False, "replace OUTPUT if it exists")

    def __post_init__(self):
        for name in ("target_modules", "labels"):  # "q_proj,v_proj" from YAML or a caller
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, tuple(t.strip() for t in value.split(",") if t.strip()))
            elif value is not None:
                object.__setattr__(self, name, tuple(str(v) for v in value))

    def problems(self) -> list[str]:
        """Every invalid setting, each as "what is wrong: what to do"."""
        out = []
        for name in ("rank", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                out.append(f"{name} is {getattr(self, name)}: it must be at least 1")
        for name in ("steps", "epochs", "num_labels", "max_examples", "threads",
                     "save_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                out.append(f"{name} is {value}: it must be at least 1 (or left unset)")
        if self.skip_steps < 0:
            out.append(f"skip_steps is {self.skip_steps}: it must be 0 or more")
        if self.num_labels == 1:
            out.append("num_labels is 1: a classifier needs at least 2 classes")
        if self.alpha <= 0:
            out.append(f"alpha is {self.alpha}: it must be positive")
        if not 0 <= self.dropout < 1:
            out.append(f"dropout is {self.dropout}: it must be in [0, 1)")
        for name in ("lr", "head_lr"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                out.append(f"{name} is {getattr(self, name)}: it must be positive (or left unset)")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            out.append("weight_decay and max_grad_norm must not be negative")
        if self.task is not None and self.task not in TASKS:
            out.append(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.text_unit not in TEXT_UNITS:
            out.append(f"text_unit {self.text_unit!r} is not one of {', '.join(TEXT_UNITS)}")
        if self.classifier not in CLASSIFIERS:
            out.append(f"classifier {str(self.classifier)[:40]!r} is not one of {', '.join(CLASSIFIERS)}")
        if self.target_modules is not None and not self.target_modules:
            out.append("target_modules is empty: name at least one module, or leave it unset")
        if self.full and self.target_modules is not None:
            out.append("target_modules was given with full=True: a full run trains every weight, "
                       "drop one of them")
        if self.save_every is not None and self.full:
            out.append("save_every was given with full=True: checkpoints are LoRA adapters; a "
                       "full run writes one whole model, drop --save-every")
        if self.classifier == "probe" and (self.full or self.init_adapter or self.task == "causal_lm"):
            out.append("classifier probe was given with full, init_adapter or task causal_lm: the "
                       "probe is a new classifier of a base's embeddings; drop one of them")
        if self.init_adapter is not None and self.full:
            out.append("init_adapter was given with full=True: a full run trains no adapter")
        if self.init_adapter is not None and not os.path.isfile(
                os.path.join(self.init_adapter, "adapter_config.json")):
            out.append(f"init_adapter {self.init_adapter!r} is not a PEFT adapter directory "
                       "(no adapter_config.json)")
        out.extend(self._labels_problems())
        if self.validation is not None and not os.path.exists(self.validation):
            out.append(f"validation {self.validation!r} does not exist: give a data file or "
                       "directory, or leave it unset")
        if not os.path.isdir(self.base):
            out.append(f"base {self.base!r} is not a directory: give a local transformers model "
                       "directory (config.json + weights + tokenizer)")
        if os.path.abspath(self.output) in (os.path.abspath(self.base), os.path.abspath(self.data),
                                            os.path.abspath(self.init_adapter or self.base)):
            out.append(f"output {self.output!r} is the base or data path: choose a new directory")
        return out

    def _labels_problems(self) -> list[str]:
        if self.labels is None:
            return []
        out = []
        if len(self.labels) < 2:
            out.append(f"labels is {list(self.labels)}: a classifier needs at least 2 classes")
        repeated = sorted({name for name in self.labels if self.labels.count(name) > 1})
        if repeated:
            out.append(f"labels repeats {', '.join(repeated)}: name each class once")
        if self.num_labels is not None and self.num_labels != len(self.labels):
            out.append(f"num_labels is {self.num_labels} but labels names {len(self.labels)} "
                       "classes: drop --num-labels")
        if self.task == "causal_lm":
            out.append("labels was given with task causal_lm: labels are for classification")
        return out

    def validate(self) -> None:
        """Raise one UsageError listing every problem (see :meth:`problems`)."""
        problems = self.problems()
        if problems:
            raise UsageError("invalid training settings:\n  - " + "\n  - ".join(problems))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules) if self.target_modules else None
        data["labels"] = list(self.labels) if self.labels else None
        return data
