"""A client's round: train the round's LoRA on local data with modelgit's trainer.

:func:`train_round` is the whole of what a client does, with plain inputs, so that it runs (and
is tested) without Flower; :mod:`.client` wraps it in a ClientApp. The server is a stranger to
the client as much as the other way round: its settings are checked against limits and its
LoRA against the client's own base model before anything is trained.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..untrusted import number_problem

__all__ = ["RoundSettings", "RoundResult", "train_round", "base_fingerprint", "write_lora_dir"]

_LIMITS = {"steps": (1, 1_000_000), "batch-size": (1, 4096), "max-length": (2, 1_000_000),
           "max-examples": (0, 10 ** 9), "seed": (0, 2 ** 31), "rank": (1, 4096),
           "fisher-examples": (1, 100_000), "threads": (0, 1024), "server-round": (1, 10 ** 6),
           "data-offset": (0, 10 ** 12)}


@dataclass(frozen=True)
class RoundSettings:
    """What the server asked this round (checked by :meth:`parse`)."""

    round: int
    steps: int
    lr: float
    batch_size: int
    max_length: int
    max_examples: int | None
    seed: int
    rank: int
    alpha: float
    fingerprint: str
    fisher: bool
    fisher_examples: int
    threads: int | None
    data_offset: int  # steps this client took in earlier rounds: its data order continues there

    @classmethod
    def parse(cls, settings: dict) -> "RoundSettings":
        """Raises UsageError listing every missing or out-of-range setting."""
        problems = [p for key, (low, high) in _LIMITS.items()
                    if (p := number_problem(settings.get(key), key, low, high, integer=True))]
        for key in ("lr", "alpha"):
            if p := number_problem(settings.get(key), key, 0, 1e6, above_minimum=True):
                problems.append(p)
        if not isinstance(settings.get("fingerprint"), str) or len(settings["fingerprint"]) > 200:
            problems.append("fingerprint is missing or not a short string")
        if not isinstance(settings.get("fisher"), bool):
            problems.append("fisher is not a boolean")
        if problems:
            raise UsageError("the server's round settings are invalid: " + "; ".join(problems))
        s = settings
        return cls(s["server-round"], s["steps"], float(s["lr"]), s["batch-size"], s["max-length"],
                   s["max-examples"] or None, s["seed"], s["rank"], float(s["alpha"]),
                   s["fingerprint"], s["fisher"], s["fisher-examples"], s["threads"] or None,
                   s["data-offset"])


@dataclass(frozen=True)
class RoundResult:
    """What a client sends back."""

    lora: dict[str, dict[str, torch.Tensor]]
    examples: int
    fisher: dict[str, dict[str, torch.Tensor]] | None
    metrics: dict
    fingerprint: str


@functools.lru_cache(maxsize=8)
def _fingerprint(path: str, stamp: tuple) -> str:
    from ..fingerprint import fingerprint_dir

    return fingerprint_dir(path)


def base_fingerprint(base: str) -> str:
    """The base's fingerprint, remembered while its weight files are unchanged (a client
    hashes its base once, not every round)."""
    files = sorted(f for f in os.listdir(base) if f.endswith(".safetensors"))
    stamp = tuple((f, os.stat(os.path.join(base, f)).st_mtime_ns,
                   os.stat(os.path.join(base, f)).st_size) for f in files)
    return _fingerprint(os.path.abspath(base), stamp)


def _check_fits(base: str, lora: dict, rank: int) -> None:
    """Every module of the server's LoRA is a 2-D weight of this base with matching shapes."""
    from ..fingerprint import tensor_infos_dir

    infos = tensor_infos_dir(base)
    for module, parts in lora.items():
        info = infos.get(f"{module}.weight")
        a, b = tuple(parts["A"].shape), tuple(parts["B"].shape)
        if info is None or len(info[1]) != 2 or a != (rank, info[1][1]) or b != (info[1][0], rank):
            raise UsageError(f"the server's LoRA does not fit this client's base: module "
                             f"{module!r} (A {list(a)}, B {list(b)}) vs weight "
                             f"{list(info[1]) if info else 'missing'}")


def write_lora_dir(path: str, lora: dict, rank: int, alpha: float) -> str:
    """A PEFT adapter directory (config + safetensors) holding ``lora`` as PEFT stores it."""
    from safetensors.torch import save_file

    from .payload import lora_key

    os.makedirs(path, exist_ok=True)
    tensors = {lora_key(m, k): t.float().contiguous() for m, parts in lora.items()
               for k, t in parts.items()}
    save_file(tensors, os.path.join(path, "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
              "bias": "none", "task_type": "CAUSAL_LM", "use_rslora": False,
              "target_modules": sorted({m.rsplit(".", 1)[-1] for m in lora})}
    with open(os.path.join(path, "adapter_config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)
    return path


def _fisher(base: str, adapter: str, data: str, settings: RoundSettings) -> dict:
    """Diagonal empirical Fisher of the trained LoRA factors on local examples."""
    from ..adapters.loading import load_model, load_tokenizer
    from ..data import load_examples
    from ..merge.fisher import estimate_fisher
    from .payload import split_lora_key

    tokenizer = load_tokenizer(base)
    model = load_model(base, "causal_lm", adapter_dir=adapter)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    texts = [r.text for r in load_examples(data).take(settings.fisher_examples)]

    def batches():
        for text in texts:
            enc = tokenizer(text, return_tensors="pt", truncation=True,
                            max_length=settings.max_length)
            if enc["input_ids"].shape[1] >= 2:
                yield {**enc, "labels": enc["input_ids"]}

    out: dict = {}
    for name, value in estimate_fisher(model, batches()).items():
        module, kind = split_lora_key(name.replace(".default.", "."))
        out.setdefault(module, {})[kind] = value
    return out


def train_round(base: str, data: str, lora: dict, settings: RoundSettings, workdir: str,
                progress: bool | None = None) -> RoundResult:
    """Train the round's LoRA (starting from the server's ``lora``) on ``data``.

    Args:
        base: this client's copy of the base model (a transformers directory).
        data: this client's training data (any format ``modelgit train`` reads).
        lora: the round's global LoRA state, as the server sent it.
        settings: the round's checked settings.
        workdir: an empty scratch directory (the caller removes it).
    Returns:
        A :class:`RoundResult`.
    Raises:
        UsageError: this base is not the run's (fingerprint), the LoRA does not fit it, or
            training fails (unreadable data, a diverging loss...).
    """
    from ..adapters import TrainConfig, train
    from ..merge.lora import load_adapter

    fingerprint = base_fingerprint(base)
    if fingerprint != settings.fingerprint:
        raise UsageError(f"this client's base {base!r} (fingerprint {fingerprint[:16]}) is not the "
                         f"run's (fingerprint {settings.fingerprint[:16]}): check out the "
                         "repository's base revision")
    _check_fits(base, lora, settings.rank)
    start = write_lora_dir(os.path.join(workdir, "global"), lora, settings.rank, settings.alpha)
    out = os.path.join(workdir, "trained")
    result = train(TrainConfig(base=base, data=data, output=out, task="causal_lm",
                               init_adapter=start, steps=settings.steps, lr=settings.lr,
                               batch_size=settings.batch_size, max_length=settings.max_length,
                               max_examples=settings.max_examples, seed=settings.seed,
                               skip_steps=settings.data_offset,
                               threads=settings.threads), progress=progress)
    trained = {m: {"A": p["A"], "B": p["B"]} for m, p in load_adapter(out).lora.items()}
    fisher = _fisher(base, out, data, settings) if settings.fisher else None
    metrics = {k: result.metrics[k] for k in ("final_loss", "start_loss", "seconds")}
    return RoundResult(trained, int(result.metrics["examples"]), fisher, metrics, fingerprint)
