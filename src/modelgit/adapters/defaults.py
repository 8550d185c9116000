"""Settings of a classification run chosen from its data, where the user left them unset.

A classifier trained by LoRA has a new, randomly initialised head: it needs a larger learning
rate than the LoRA matrices, several passes over a small labelled set, and no more sequence
length than the texts have. So, for ``--task classification``:

* the head's learning rate (``--head-lr``) defaults to :data:`HEAD_LR`, the LoRA's (``--lr``)
  to :data:`CLASSIFIER_LR` (a causal LM keeps :data:`CAUSAL_LR`);
* without ``--steps``/``--epochs``, enough epochs for about :data:`TARGET_STEPS` steps,
  between :data:`MIN_EPOCHS` and :data:`MAX_EPOCHS`;
* the sequence length is the 95th percentile of the texts' token counts (rounded up to a
  multiple of 16), at most ``--max-length``;
* without ``--targets``, a classifier that reads a pooler (BERT's ``tanh(dense(h_CLS))``) has
  the pooler adapted too (:func:`modelgit.adapters.targets.resolve_targets`);
* without ``--validation``, a held-out slice of the data (a tenth, at most
  :data:`MAX_HOLDOUT` examples, when there are at least :data:`MIN_FOR_HOLDOUT`) is kept out
  of training and its accuracy reported as the run goes.

The values were measured on all-MiniLM-L6-v2 with this machine's labelled tasks (see
``benchmarks/classify.py`` and benchmarks/README.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Schedule", "resolve", "holdout_indices", "CAUSAL_LR", "CLASSIFIER_LR", "HEAD_LR", "TARGET_STEPS",
           "MIN_EPOCHS", "MAX_EPOCHS", "MAX_HOLDOUT", "MIN_FOR_HOLDOUT"]

CAUSAL_LR = 2e-4
CLASSIFIER_LR = 1e-3
HEAD_LR = 5e-3
TARGET_STEPS = 150
MIN_EPOCHS, MAX_EPOCHS = 3, 10
MAX_HOLDOUT, MIN_FOR_HOLDOUT = 200, 50


@dataclass(frozen=True)
class Schedule:
    """The resolved settings of one run (recorded in training_config.json ``resolved``)."""

    lr: float
    head_lr: float | None  # None: the head (if any) trains at ``lr``
    max_length: int
    steps: int | None
    epochs: int | None
    holdout: int  # examples kept out of training to report validation accuracy


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def resolve(config, task: str, lengths: list[int]) -> Schedule:
    """The settings of a run of ``config`` on examples of ``lengths`` tokens (each already cut
    at ``config.max_length``)."""
    if task != "classification" or config.full:
        lr = config.lr if config.lr is not None else CAUSAL_LR
        return Schedule(lr, config.head_lr, config.max_length, config.steps, config.epochs, 0)
    lr = config.lr if config.lr is not None else CLASSIFIER_LR
    head_lr = config.head_lr if config.head_lr is not None else HEAD_LR
    length = config.max_length
    if lengths:
        length = min(config.max_length, max(16, -(-_percentile(lengths, 0.95) // 16) * 16))
    holdout = 0
    if not config.validation and len(lengths) >= MIN_FOR_HOLDOUT:
        holdout = min(MAX_HOLDOUT, len(lengths) // 10)
    steps, epochs = config.steps, config.epochs
    if steps is None and epochs is None:
        per_epoch = max(1, -(-(len(lengths) - holdout) // config.batch_size))
        epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, -(-TARGET_STEPS // per_epoch)))
    return Schedule(lr, head_lr, length, steps, epochs, holdout)


def holdout_indices(total: int, count: int, seed: int) -> list[int]:
    """The indices (sorted) of the ``count`` examples of ``total`` that a run of ``seed`` holds
    out (a benchmark fits its baselines on the same examples the adapter trains on)."""
    import numpy as np

    return sorted(int(i) for i in np.random.default_rng(seed + 1).permutation(total)[:count])
