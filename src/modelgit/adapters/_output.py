"""Write a training run's output directory: all of it, or nothing.

Everything goes to a temporary directory beside the output first and is renamed into place at
the end, so a failed or interrupted run never leaves a half-written adapter where a finished one
is expected; one killed outright leaves the temporary, which the next run in that directory
removes (see :mod:`modelgit._outputs`).
"""

from __future__ import annotations

import contextlib
import json
import os

from .._outputs import install_directory, remove, remove_stale_temporaries, temporary_path

from ..data import write_data_card
from .config import TrainConfig
from .loading import quiet_transformers, write_labels

__all__ = ["checkpoint_staging", "save_checkpoint", "write_output"]


def _json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _versions() -> dict:
    import peft
    import torch
    import transformers

    from .. import __version__

    return {"modelgit": __version__, "peft": peft.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def _save(model, tokenizer, config: TrainConfig, folder: str, id2label, pooling: str = "cls") -> None:
    import torch

    if config.full:
        with open(os.path.join(config.base, "config.json"), encoding="utf-8") as handle:
            base_config = json.load(handle)
        dtype = getattr(torch, str(base_config.get("dtype") or base_config.get("torch_dtype")
                                   or "float32"), torch.float32)
        model.to(dtype).save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    else:
        model.save_pretrained(folder, safe_serialization=True)
        _canonical_adapter_config(os.path.join(folder, "adapter_config.json"))
        with contextlib.suppress(FileNotFoundError):  # PEFT's boilerplate card; the workflow writes real ones
            os.remove(os.path.join(folder, "README.md"))
        if id2label:
            write_labels(folder, id2label, pooling)


def _canonical_adapter_config(path: str) -> None:
    """Rewrite PEFT's config with sorted keys and lists (it writes sets in hash order), so equal
    settings give equal bytes in every process; a local base is recorded by its absolute path
    (PEFT records the path as given, which names nothing from another directory)."""
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    for key in ("target_modules", "modules_to_save"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    base = config.get("base_model_name_or_path")
    if isinstance(base, str) and base and os.path.exists(base):
        config["base_model_name_or_path"] = os.path.abspath(base)
    _json(path, config)


@contextlib.contextmanager
def checkpoint_staging(config: TrainConfig):
    """Yield the directory where a run with ``save_every`` keeps its checkpoints until
    :func:`write_output` moves them into the output (None without ``save_every``); it is a
    temporary beside the output, removed when the run ends however it ends."""
    if not config.save_every:
        yield None
        return
    staging = temporary_path(os.path.normpath(config.output) + ".checkpoints")
    created = _missing_parents(os.path.dirname(staging))
    os.makedirs(staging)
    try:
        yield staging
    finally:
        remove(staging)
        for folder in created:  # deepest first; one that holds the output now stays
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def _missing_parents(folder: str) -> list[str]:
    """The directories of ``folder``'s path (itself included) that do not exist, deepest first:
    what a run creates before training and removes again if the run leaves nothing in them."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def save_checkpoint(model, tokenizer, config: TrainConfig, staging: str, step: int,
                    id2label: dict | None, pooling: str = "cls") -> None:
    """Save the adapter as it is after ``step`` steps to ``staging/checkpoint-<step>``."""
    with quiet_transformers():
        _save(model, tokenizer, config, os.path.join(staging, f"checkpoint-{step}"), id2label,
              pooling)


def write_output(config: TrainConfig, model, tokenizer, id2label: dict | None, card: dict,
                 metrics: dict, resolved: dict, checkpoints: str | None = None,
                 pooling: str = "cls") -> None:
    """Save the adapter (or whole model), data_card.json, metrics.json, training_config.json,
    and the ``checkpoint-<step>`` directories kept in ``checkpoints``."""
    out = os.path.normpath(config.output)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent, os.path.basename(out))
    tmp = temporary_path(out)
    try:
        with quiet_transformers():
            _save(model, tokenizer, config, tmp, id2label, pooling)
        write_data_card(card, os.path.join(tmp, "data_card.json"))
        _json(os.path.join(tmp, "metrics.json"), metrics)
        _json(os.path.join(tmp, "training_config.json"),
              {"config": config.to_dict(), "resolved": resolved, "versions": _versions()})
        for name in sorted(os.listdir(checkpoints)) if checkpoints else ():
            os.rename(os.path.join(checkpoints, name), os.path.join(tmp, name))
        # checked before training (train's _check_output): absent, empty, or an earlier
        # training output that --overwrite replaces whole
        install_directory(tmp, out, owned=lambda name: True)
    finally:
        remove(tmp)
