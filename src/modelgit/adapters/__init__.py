"""Adapters: LoRA training through PEFT on local data, and loading bases + adapters offline.

``train(TrainConfig(...))`` writes a PEFT adapter directory with a data card (sizes and hashes,
never content), the metrics and the exact settings; ``full=True`` trains the whole base instead.
Reading adapters' tensors for merging lives in :mod:`modelgit.merge.lora`.
"""

from __future__ import annotations

import importlib

from .config import TASKS, TrainConfig

# the rest imports torch/transformers/peft (seconds): loaded on first use, so that the CLI's
# parser (which derives `modelgit train`'s flags from TrainConfig) starts fast
_LAZY = {"label_ids": "labels", "label_mapping": "labels", "architecture_task": "loading",
         "load_model": "loading", "load_tokenizer": "loading", "read_labels": "loading",
         "DEFAULT_TARGETS": "targets", "default_targets": "targets", "resolve_targets": "targets",
         "TrainResult": "training", "train": "training"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
    for lazy_name, module_name in _LAZY.items():
        if module_name == _LAZY[name]:
            globals()[lazy_name] = getattr(module, lazy_name)
    return globals()[name]

__all__ = ["DEFAULT_TARGETS", "TASKS", "TrainConfig", "TrainResult", "architecture_task",
           "default_targets", "label_ids", "label_mapping", "load_model", "load_tokenizer",
           "read_labels", "resolve_targets", "train"]
