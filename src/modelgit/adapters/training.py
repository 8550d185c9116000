"""`train`: LoRA training through PEFT (or, with ``full``, of every weight) on local data, on CPU.

A plain PyTorch loop (AdamW, constant learning rate, gradient clipping), not ``transformers.Trainer``:
small enough to read, and deterministic. The seed fixes the LoRA and head initialisation, the data
order and dropout; deterministic algorithms are switched on for the run, so the same seed, data
and settings give byte-identical adapter files (on the same machine and library versions).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, replace

from ..data import data_card, load_examples
from ..errors import UsageError
from ..fingerprint import fingerprint_dir
from . import _batches
from .._outputs import check_output
from ._output import checkpoint_staging, save_checkpoint, write_output
from .config import TrainConfig
from .defaults import resolve as resolve_schedule
from .labels import label_ids, label_mapping
from .loading import (architecture_task, check_task, load_model, load_tokenizer, model_type,
                      quiet_transformers, read_pooling, supported_tasks)
from .probe import MAX_PROBE_EXAMPLES, probe_accuracy, probe_classifier
from .targets import resolve_targets

__all__ = ["TrainResult", "train"]

_CLASSIFIER_HEADS = ("classifier", "score")  # PEFT's SEQ_CLS modules_to_save


@dataclass(frozen=True)
class TrainResult:
    """What a run wrote: ``output`` (adapter or whole model), its metrics and data card."""

    output: str
    task: str
    full: bool
    target_modules: tuple[str, ...] | str | None
    metrics: dict
    data_card: dict


def _pick_task(config: TrainConfig, labels: list) -> str:
    if config.task:
        return config.task
    if architecture_task(config.base) == "classification" or all(l is not None for l in labels):
        return "classification"
    if "causal_lm" not in supported_tasks(config.base):  # an encoder: it can only classify
        return "classification"
    return "causal_lm"


def _check_output(config: TrainConfig) -> None:
    out = config.output
    try:  # a link, a device, a FIFO or a file is refused, never renamed over
        state = check_output(out, "directory", config.overwrite, "--overwrite")
    except UsageError as exc:
        raise UsageError(f"{exc} (--overwrite replaces an earlier training output)") from None
    if state == "nonempty" and not os.path.isfile(os.path.join(out, "training_config.json")):
        raise UsageError(f"--overwrite refuses to replace {out!r}: it holds no training_config.json, "
                         "so it is not the output of an earlier `modelgit train`")


@contextlib.contextmanager
def _seeded(seed: int, threads: int | None):
    """Seed torch, switch on deterministic algorithms and set the thread count, restoring all
    three afterwards (the caller's RNG state is untouched)."""
    import torch

    was_deterministic, was_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if threads:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
            torch.set_num_threads(was_threads)


def _transposed(model, targets) -> bool:
    """Whether the targets are GPT-2 style ``Conv1D`` layers (weights stored as (in, out))."""
    from transformers.pytorch_utils import Conv1D

    return not isinstance(targets, str) and any(
        isinstance(module, Conv1D) and name.rsplit(".", 1)[-1] in targets
        for name, module in model.named_modules())


def _wrap_lora(model, config: TrainConfig, task: str):
    from peft import LoraConfig, get_peft_model

    exclude = _CLASSIFIER_HEADS if task == "classification" else ()
    targets = resolve_targets(model, model_type(config.base), config.target_modules, exclude,
                              classifier=task == "classification")
    alpha = int(config.alpha) if float(config.alpha).is_integer() else config.alpha
    lora = LoraConfig(r=config.rank, lora_alpha=alpha, lora_dropout=config.dropout, bias="none",
                      target_modules=targets if isinstance(targets, str) else list(targets),
                      fan_in_fan_out=_transposed(model, targets),
                      task_type="SEQ_CLS" if task == "classification" else "CAUSAL_LM")
    return get_peft_model(model, lora), targets


def _resume_lora(model, config: TrainConfig):
    from peft import PeftModel

    from .loading import _short

    try:
        model = PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UsageError(f"the adapter {config.init_adapter!r} does not fit the base {config.base!r} "
                         f"({_short(exc)})") from None
    targets = model.peft_config["default"].target_modules
    return model, tuple(sorted(targets)) if not isinstance(targets, str) else targets


def _window(steps: int) -> int:
    """Steps averaged into a smoothed loss: a tenth of the run, between 1 and 50."""
    return max(1, min(50, -(-steps // 10)))


def _is_head(name: str) -> bool:
    """A task head's parameter: PEFT's modules_to_save copy of a module trained whole, the new
    classifier / score and whatever else of the head its suffix rule takes in (DistilBERT's
    ``pre_classifier``, as new as the classifier it feeds)."""
    return ".modules_to_save." in name


def _loop(model, plan, ids, labels, pad_id: int, config: TrainConfig, progress,
          validate=None, checkpoint=None) -> dict:
    import torch

    from ..progress import progress_bar

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    head = [p for n, p in named if config.head_lr is not None and _is_head(n)]
    rest = [p for n, p in named if not (config.head_lr is not None and _is_head(n))]
    groups = [{"params": rest, "lr": config.lr}] + ([{"params": head, "lr": config.head_lr}] if head else [])
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    losses, tokens, seen, curve_valid, saved = [], 0, 0, [], []
    start = time.perf_counter()
    window = _window(len(plan))
    every = max(1, -(-len(plan) // 10))  # the held-out accuracy ten times a run
    with progress_bar(len(plan), "train", progress, unit="step") as bar:
        for step, batch in enumerate(_batches.iterate(plan, ids, pad_id, labels), 1):
            if validate is not None and step > 1 and (step - 1) % every == 0:
                accuracy = validate()["accuracy"]
                curve_valid.append({"step": step - 1, "accuracy": accuracy})
                bar.set_postfix(valid_acc=accuracy)
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise UsageError(f"the training loss became {loss.item()} at step {step}: lower --lr "
                                 f"(now {config.lr}) or --head-lr (now {config.head_lr}) or "
                                 "--max-length")
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tokens += int(batch["attention_mask"].sum())
            seen += len(batch["input_ids"])
            recent = losses[-window:]
            bar.update(1, loss=sum(recent) / len(recent))
            done = config.skip_steps + step  # a continued run counts on from where it started
            if checkpoint is not None and done % config.save_every == 0 and step < len(plan):
                checkpoint(done)
                saved.append(done)
    seconds = time.perf_counter() - start
    buckets = min(20, len(losses))
    curve = [sum(part) / len(part) for part in
             (losses[i * len(losses) // buckets:(i + 1) * len(losses) // buckets] for i in range(buckets))]
    return {"steps": len(losses), "examples_seen": seen, "tokens_seen": tokens,
            # one batch's loss is noise: the smoothed figures average `loss_window` steps
            "start_loss": sum(losses[:window]) / len(losses[:window]),
            "final_loss": sum(losses[-window:]) / len(losses[-window:]), "loss_window": window,
            "first_loss": losses[0], "last_loss": losses[-1], "mean_loss": sum(losses) / len(losses),
            "min_loss": min(losses), "loss_curve": curve, "seconds": round(seconds, 3),
            "steps_per_second": len(losses) / seconds if seconds else None,
            "tokens_per_second": tokens / seconds if seconds else None,
            **({"validation_curve": curve_valid} if curve_valid else {}),
            **({"checkpoints": [f"checkpoint-{step}" for step in saved]} if saved else {}),
            "trainable_parameters": sum(p.numel() for p in params),
            "total_parameters": sum(p.numel() for p in model.parameters())}


def _probe_classifiers(config: TrainConfig) -> bool:
    """Whether this run builds the probe classifier (:func:`.probe.probe_classifier`): asked
    for, or (``auto``) to keep it unless held-out data shows the tuned one ahead by more than
    chance (:func:`_keep_probe`), on a base that mean pooling supports.

    Raises:
        UsageError: ``--classifier probe`` where no probe classifier can be built.
    """
    from .loading import _read_config
    from .pooling import mean_pooling_problem

    if config.classifier == "tuned" or config.full or config.init_adapter:
        return False
    problem = mean_pooling_problem(_read_config(config.base))
    if problem and config.classifier == "probe":
        raise UsageError(f"--classifier probe: {problem}; use --classifier tuned")
    return problem is None


def _keep_probe(config: TrainConfig, tuned_hits: list[bool], probed, valid, metrics: dict,
                pad_id: int, examples: int) -> bool:
    """Whether the probe classifier is written instead of the tuned model (whose held-out
    answers are ``tuned_hits``): asked for, or the held-out data does not show the tuned one
    ahead by more than chance (:func:`_ahead`). Records both in ``metrics["validation"]``."""
    if not valid:
        return config.classifier == "probe"
    probe_hits = []
    scored = _validation_loss(probed, *valid, pad_id, config.batch_size, probe_hits)
    validation = metrics["validation"]
    tuned = {k: validation[k] for k in ("loss", "accuracy")}
    validation["probe"] = {"accuracy": scored["accuracy"], "loss": scored["loss"],
                           "examples": min(examples, MAX_PROBE_EXAMPLES), "pooling": "mean"}
    if config.classifier == "probe" or not _ahead(tuned_hits, probe_hits):
        validation.update(loss=scored["loss"], accuracy=scored["accuracy"],
                          **({"tuned": tuned} if metrics["steps"] else {}))
        return True
    return False


def _ahead(hits: list[bool], other: list[bool]) -> bool:
    """Whether the classifier with ``hits`` beats the one with ``other`` on the same examples
    by more than chance: the examples only it gets right outnumber those only the other gets
    right by over one standard error of that difference (McNemar's paired comparison). On a
    few dozen held-out examples a plain comparison picks the luckier model; the probe, with a
    few thousand parameters fitted in closed form, is the safer one to keep."""
    only = sum(a and not b for a, b in zip(hits, other))
    only_other = sum(b and not a for a, b in zip(hits, other))
    return only - only_other > (only + only_other) ** 0.5


def _no_training(model) -> dict:
    """The metrics of a run that trains nothing (``--classifier probe``)."""
    return {"steps": 0, "examples_seen": 0, "tokens_seen": 0, "seconds": 0.0,
            "trainable_parameters": 0, "total_parameters": sum(p.numel() for p in model.parameters())}


def _validation_loss(model, ids, labels, pad_id: int, batch_size: int,
                     hits: list | None = None) -> dict:
    """Mean loss on held-out examples (token-weighted for a causal LM, per example for a
    classifier, with its accuracy), in eval mode: no dropout, no randomness consumed. A
    classifier's right (True) and wrong answers are appended to ``hits``, in order."""
    import torch

    was_training = model.training
    model.eval()
    total, count, correct = 0.0, 0, 0
    plan = _batches.in_order(len(ids), batch_size)
    with torch.no_grad():
        for batch in _batches.iterate(plan, ids, pad_id, labels):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            if labels is None:  # predict token t+1 from tokens <= t; padding is -100
                logits, target = logits[:, :-1].float(), batch["labels"][:, 1:]  # (b, t-1, v), (b, t-1)
                nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                        target.reshape(-1), ignore_index=-100,
                                                        reduction="sum")
                total, count = total + float(nll), count + int((target != -100).sum())
            else:
                logits = logits.float()  # (b, classes)
                total += float(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
                count += len(batch["labels"])
                right = logits.argmax(-1) == batch["labels"]
                correct += int(right.sum())
                if hits is not None:
                    hits.extend(bool(r) for r in right)
    model.train(was_training)
    out = {"loss": total / count, "examples": len(ids)}
    if labels is None:
        out.update(perplexity=math.exp(out["loss"]), tokens=count)
    else:
        out["accuracy"] = correct / count
    return out


def _base_id2label(base: str) -> dict[int, str] | None:
    if architecture_task(base) != "classification":
        return None
    with open(os.path.join(base, "config.json"), encoding="utf-8") as handle:
        names = json.load(handle).get("id2label") or {}
    return {int(k): v for k, v in names.items()} or None


def _step_threads(model, config: TrainConfig, ids: list[list[int]]) -> int:
    """Threads for one training step: ``--threads`` when given, else chosen from the step's
    work (about 6 multiply-adds per weight per token: forward and backward) and the machine."""
    from .._threads import choose_threads

    if config.threads:
        return config.threads
    mean_tokens = sum(len(seq) for seq in ids) / max(1, len(ids))
    weights = sum(p.numel() for p in model.parameters())
    return choose_threads(6 * weights * mean_tokens * min(config.batch_size, len(ids)))


def _labelled(config: TrainConfig, records, ids) -> tuple[dict | None, list | None]:
    """(id2label, class indices) of a classification run: the numbering of ``config.labels``
    when given, else per the data (see :mod:`.labels`)."""
    id2label = label_mapping([r.label for r in records], config.num_labels,
                             _base_id2label(config.base), config.labels)
    return id2label, label_ids([r.label for r in records], id2label)


def _hold_out(ids: list, labels: list, count: int, seed: int) -> tuple[list, list, tuple]:
    """(training ids, training labels, (held-out ids, labels)): ``count`` examples chosen by
    the seed, kept out of training to report validation accuracy."""
    from .defaults import holdout_indices

    held = holdout_indices(len(ids), count, seed)
    chosen = set(held)
    keep = [i for i in range(len(ids)) if i not in chosen]
    return ([ids[i] for i in keep], [labels[i] for i in keep],
            ([ids[i] for i in held], [labels[i] for i in held]))


def _validation_set(config: TrainConfig, tokenizer, task: str, id2label) -> tuple[list, list | None]:
    """Token ids (and class indices) of ``config.validation``, prepared as the training data."""
    records = load_examples(config.validation, config.text_field, config.label_field,
                            config.text_unit).take(config.max_examples)
    ids = _batches.encode(tokenizer, [r.text for r in records], config.max_length)
    if task == "classification":
        return ids, label_ids([r.label for r in records], id2label,
                              where=f"validation data {config.validation!r}")
    ids = [seq for seq in ids if len(seq) >= 2]
    if not ids:
        raise UsageError(f"every example of the validation data {config.validation!r} is shorter "
                         "than 2 tokens: a causal LM's loss needs longer texts")
    return ids, None


def train(config: TrainConfig, progress: bool | None = None) -> TrainResult:
    """Train per ``config`` and write ``config.output`` (replaced only when all succeeded).

    ``output`` holds the PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``,
    plus ``labels.json`` for classifiers) or, with ``full``, a whole transformers model with its
    tokenizer; and ``data_card.json``, ``metrics.json`` and ``training_config.json``; with
    ``save_every``, the adapter every that many steps as ``checkpoint-<step>`` directories.

    The metrics report the training loss smoothed over ``loss_window`` steps at the start
    (``start_loss``) and the end (``final_loss``) of the run, and, with ``config.validation``,
    the loss on that held-out data before and after training (``validation``).

    Without ``config.threads`` the thread count is chosen from the step's size and the
    machine's load (:func:`modelgit._threads.choose_threads`): the same seed then gives the same
    bytes when the same count is chosen; pass ``threads`` for bit-identical reruns anywhere.

    Args:
        progress: True: a bar; False: nothing; None: a bar on a terminal, else periodic lines
            (step, rate, ETA, smoothed loss); see :mod:`modelgit.progress`.
    Returns:
        A :class:`TrainResult`.
    Raises:
        UsageError: invalid settings, unreadable or unsuitable data, a base that cannot be
            loaded or cannot do the task, an unknown target module, an existing output, or a
            diverging loss.
    """
    config.validate()
    _check_output(config)
    with checkpoint_staging(config) as staging:
        return _train(config, progress, staging)


def _train(config: TrainConfig, progress: bool | None, staging: str | None) -> TrainResult:
    records = load_examples(config.data, config.text_field, config.label_field,
                            config.text_unit).take(config.max_examples)
    card = data_card(config.data, config.text_field, config.label_field, config.text_unit)
    task = _pick_task(config, [r.label for r in records])
    check_task(config.base, task)
    tokenizer = load_tokenizer(config.base)
    ids = _batches.encode(tokenizer, [r.text for r in records], config.max_length)
    schedule = resolve_schedule(config, task, [len(seq) for seq in ids])
    asked = config
    config = replace(config, lr=schedule.lr, head_lr=schedule.head_lr, steps=schedule.steps,
                     epochs=schedule.epochs, max_length=schedule.max_length)
    if schedule.max_length < asked.max_length:  # the data's own length (see .defaults)
        ids = _batches.encode(tokenizer, [r.text for r in records], config.max_length)
    labels = id2label = held = None
    if task == "classification":
        id2label, labels = _labelled(config, records, ids)
        if schedule.holdout:
            ids, labels, held = _hold_out(ids, labels, schedule.holdout, config.seed)
    else:  # a causal LM learns nothing from a single token
        ids = [seq for seq in ids if len(seq) >= 2]
        if not ids:
            raise UsageError(f"every example of {config.data!r} is shorter than 2 tokens: "
                             "a causal LM needs longer texts (or try --text-unit paragraph)")
    valid = _validation_set(config, tokenizer, task, id2label) if config.validation else held
    with _seeded(config.seed, config.threads), quiet_transformers():
        import torch

        # an adapter continued keeps its pooling (a mean-pooled one then tunes through the mean)
        pooling = read_pooling(config.init_adapter) if task == "classification" else "cls"
        model = load_model(config.base, task, id2label, pad_token_id=tokenizer.pad_token_id,
                           pooling=pooling)
        threads = _step_threads(model, config, ids)
        torch.set_num_threads(threads)
        targets = None
        if config.full:
            model.requires_grad_(True)
        elif config.init_adapter:
            model, targets = _resume_lora(model, config)
        else:
            model, targets = _wrap_lora(model, config, task)
        skip = config.skip_steps  # the steps an earlier run (or round) took in this order
        plan = _batches.batch_plan(len(ids), config.batch_size, config.seed,
                                   config.steps and config.steps + skip, config.epochs)[skip:]
        before = _validation_loss(model, *valid, tokenizer.pad_token_id, config.batch_size) \
            if valid else None
        check = (lambda: _validation_loss(model, *valid, tokenizer.pad_token_id, config.batch_size)) \
            if valid and task == "classification" else None
        # the probe classifier: asked for, or (auto) to compare with the tuned one on held-out data
        mean_pooling = task == "classification" and _probe_classifiers(config) and \
            (bool(valid) or config.classifier == "probe")
        # the yardstick: a linear probe on the starting model's embeddings (no randomness used);
        # where the classifier can be that probe (BERT), the probe classifier below is it
        probe = probe_accuracy(model, ids, labels, *valid, tokenizer.pad_token_id, config.batch_size,
                               len(id2label), progress) if check and not mean_pooling else None
        keep = (lambda step: save_checkpoint(model, tokenizer, config, staging, step, id2label,
                                                    pooling)) \
            if staging else None
        metrics = _loop(model, plan, ids, labels, tokenizer.pad_token_id, config, progress, check,
                        keep) if config.classifier != "probe" else _no_training(model)
        tuned_hits = []  # the tuned model's right and wrong held-out answers, for _keep_probe
        if valid:
            after = _validation_loss(model, *valid, tokenizer.pad_token_id, config.batch_size,
                                     tuned_hits)
            metrics["validation"] = {**after, "loss_before": before["loss"],
                                     **({"perplexity_before": before["perplexity"]}
                                        if "perplexity" in before else
                                        {"accuracy_before": before["accuracy"]}),
                                     **({"probe": probe} if probe else {})}
        if mean_pooling:
            probed, refit = probe_classifier(config.base, id2label, model.peft_config["default"],
                                             ids, labels, tokenizer.pad_token_id, config.batch_size,
                                             progress, held or ((), ()))
            if _keep_probe(config, tuned_hits, probed, valid, metrics, tokenizer.pad_token_id,
                           len(ids)):
                model, pooling = probed, "mean"
                if held is not None:  # chosen: refitted on every example, the held-out ones too
                    refit()
                    metrics["validation"]["probe"]["refitted_examples"] = \
                        min(len(ids) + len(held[0]), MAX_PROBE_EXAMPLES)
    metrics.update(task=task, mode="full" if config.full else "lora", examples=len(ids),
                   skipped_examples=len(records) - len(ids), threads=threads)
    resolved = {"task": task, "target_modules": list(targets) if isinstance(targets, tuple) else targets,
                "num_labels": len(id2label) if id2label else None,
                "base_fingerprint": fingerprint_dir(config.base)}
    if task == "classification" and not config.full:  # what was chosen from the data
        resolved.update(lr=config.lr, head_lr=config.head_lr, max_length=config.max_length,
                        steps=metrics["steps"], epochs=config.epochs, holdout=schedule.holdout,
                        classifier="probe" if pooling == "mean" else "tuned")
    if held is not None:
        metrics["validation"]["source"] = f"{schedule.holdout} examples held out of the data"
    write_output(asked, model, tokenizer, id2label, card, metrics, resolved, staging, pooling)
    return TrainResult(config.output, task, config.full, targets, metrics, card)
