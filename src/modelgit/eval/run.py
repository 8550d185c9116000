"""Run evaluation suites on a base model, optionally with a LoRA adapter, from local directories."""

from __future__ import annotations

import math
import os

from ..adapters.labels import label_ids, label_mapping
from ..adapters.loading import architecture_task, load_model, load_tokenizer
from ..data import data_card, load_examples
from .bootstrap import interval
from .metrics import accuracy, macro_f1, nll_per_document, perplexity_of, predict_classes
from .suites import SuiteConfig

__all__ = ["evaluate_suite", "evaluate_suites", "format_table", "without_documents"]


class _Models:
    """Loads the base (+ adapter) once per task, and the tokenizer once."""

    def __init__(self, model_dir: str, adapter_dir: str | None):
        self.model_dir, self.adapter_dir = model_dir, adapter_dir
        self.tokenizer = load_tokenizer(model_dir)
        self._by_task: dict = {}

    def get(self, task: str, id2label: dict[int, str] | None = None):
        """The model for ``task``; ``id2label`` names the classes of a new head (a headless
        base), initialised from a fixed seed so that the base's scores are the same every run."""
        import torch

        key = (task, tuple(sorted(id2label.items())) if id2label else None)
        if key not in self._by_task:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self._by_task[key] = load_model(self.model_dir, task, id2label=id2label,
                                                adapter_dir=self.adapter_dir,
                                                pad_token_id=self.tokenizer.pad_token_id)
        return self._by_task[key]

    def headless(self) -> bool:
        """A bare encoder with no adapter: no classifier head, so no class names of its own."""
        return self.adapter_dir is None and architecture_task(self.model_dir) != "classification"


def _eval_threads(model, suite: SuiteConfig) -> int:
    """Threads for one evaluation batch: about 2 multiply-adds per weight per token."""
    from .._threads import choose_threads

    weights = sum(p.numel() for p in model.parameters())
    return choose_threads(2 * weights * suite.batch_size * suite.max_length)


def _run(models: _Models, suite: SuiteConfig, progress: bool | None, confidence: float) -> dict:
    import torch

    examples = load_examples(suite.data, suite.text_field, suite.label_field, suite.text_unit)
    records = examples.take(suite.max_examples)
    texts = [r.text for r in records]
    headless = suite.task == "classification" and models.headless()
    # a bare encoder (a classification project's base) gets a seeded new head over the suite's
    # classes: its scores are the chance level the adapters are compared with
    model = models.get(suite.task, label_mapping([r.label for r in records]) if headless else None)
    tokenizer = models.tokenizer
    torch.set_num_threads(_eval_threads(model, suite))
    desc = f"eval {suite.name}"
    if suite.task == "causal_lm":
        nll, tokens = nll_per_document(model, tokenizer, texts, suite.max_length, suite.batch_size,
                                       progress, desc)
        metrics, documents = perplexity_of(nll, tokens), {"nll": nll, "tokens": tokens}
    else:
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        labels = label_ids([r.label for r in records], id2label, where=f"suite {suite.name!r}")
        predictions = predict_classes(model, tokenizer, texts, suite.max_length, suite.batch_size,
                                      progress, desc)
        metrics = {"accuracy": accuracy(labels, predictions),
                   "macro_f1": macro_f1(labels, predictions), "n": len(labels)}
        documents = {"labels": labels, "predictions": predictions}
    card = data_card(suite.data, suite.text_field, suite.label_field, suite.text_unit)
    return {"suite": suite.name, "task": suite.task, "metric": suite.metric,
            "value": metrics[suite.metric], "higher_is_better": suite.higher_is_better,
            "interval": interval(documents, suite.metric, confidence), "confidence": confidence,
            "examples": len(records), "metrics": metrics,
            "data": {"sha256": card["sha256"], "bytes": card["bytes"], "records": card["records"]},
            "model": models.model_dir, "adapter": models.adapter_dir, "documents": documents}


def evaluate_suite(model_dir: str, adapter_dir: str | None, suite: SuiteConfig,
                   progress: bool | None = False, confidence: float = 0.95) -> dict:
    """Evaluate ``model_dir`` (+ the PEFT adapter in ``adapter_dir``) on one suite.

    Returns:
        ``{"suite", "task", "metric", "value", "higher_is_better", "interval", "confidence",
        "examples", "metrics", "data" (sha256, bytes, records: never content), "model",
        "adapter", "documents"}``; ``metrics`` is ``{"perplexity", "loss", "tokens"}`` or
        ``{"accuracy", "macro_f1", "n"}``; ``interval`` the ``confidence`` bootstrap interval
        of ``value`` over the documents (see :mod:`.bootstrap`; None for a single document);
        ``documents`` the per-document parts it was computed from (per-document losses and
        token counts, or labels and predictions: drop them with :func:`without_documents`
        before showing or recording a result).
    Raises:
        UsageError: unloadable model, tokenizer or adapter; unreadable data; labels the
            classifier has no class for.
    """
    return evaluate_suites(model_dir, adapter_dir, [suite], progress, confidence)[0]


def evaluate_suites(model_dir: str, adapter_dir: str | None, suites: list[SuiteConfig],
                    progress: bool | None = False, confidence: float = 0.95) -> list[dict]:
    """:func:`evaluate_suite` for several suites, loading the model once per task. torch's
    thread count is chosen per suite from the batch's size and the machine's load (see
    :mod:`modelgit._threads`) and restored afterwards."""
    import torch

    models = _Models(os.fspath(model_dir), os.fspath(adapter_dir) if adapter_dir else None)
    threads = torch.get_num_threads()
    try:
        return [_run(models, suite, progress, confidence) for suite in suites]
    finally:
        torch.set_num_threads(threads)


def without_documents(results: list[dict]) -> list[dict]:
    """The results without their per-document parts (for tables, JSON and records)."""
    return [{k: v for k, v in r.items() if k != "documents"} for r in results]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) and abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def format_table(results: list[dict]) -> str:
    """A plain-text table: one row per suite, its headline metric first, then the others."""
    level = next((r.get("confidence") for r in results if r.get("interval")), None)
    rows = [("suite", "task", "metric", "value", f"{level:.0%} interval" if level else "interval",
             "examples", "other")]
    for r in results:
        others = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(r["metrics"].items()) if k != r["metric"])
        arrow = "↑" if r["higher_is_better"] else "↓"
        span = r.get("interval")
        rows.append((r["suite"], r["task"], f"{r['metric']} {arrow}", _fmt(r["value"]),
                     f"[{_fmt(span[0])}, {_fmt(span[1])}]" if span else "-",
                     str(r["examples"]), others))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
