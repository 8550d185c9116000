"""Run evaluation suites on a base model, optionally with a LoRA adapter, from local directories."""

from __future__ import annotations

import math
import os

from ..adapters.labels import label_ids
from ..adapters.loading import load_model, load_tokenizer
from ..data import data_card, load_examples
from .metrics import classification_metrics, perplexity
from .suites import SuiteConfig

__all__ = ["evaluate_suite", "evaluate_suites", "format_table"]


class _Models:
    """Loads the base (+ adapter) once per task, and the tokenizer once."""

    def __init__(self, model_dir: str, adapter_dir: str | None):
        self.model_dir, self.adapter_dir = model_dir, adapter_dir
        self.tokenizer = load_tokenizer(model_dir)
        self._by_task: dict = {}

    def get(self, task: str):
        if task not in self._by_task:
            self._by_task[task] = load_model(self.model_dir, task, adapter_dir=self.adapter_dir,
                                             pad_token_id=self.tokenizer.pad_token_id)
        return self._by_task[task]


def _run(models: _Models, suite: SuiteConfig, progress: bool | None) -> dict:
    examples = load_examples(suite.data, suite.text_field, suite.label_field, suite.text_unit)
    records = examples.take(suite.max_examples)
    texts = [r.text for r in records]
    model, tokenizer = models.get(suite.task), models.tokenizer
    if suite.task == "causal_lm":
        metrics = perplexity(model, tokenizer, texts, suite.max_length, suite.batch_size, progress)
    else:
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        labels = label_ids([r.label for r in records], id2label, where=f"suite {suite.name!r}")
        metrics = classification_metrics(model, tokenizer, texts, labels, suite.max_length,
                                         suite.batch_size, progress)
    card = data_card(suite.data, suite.text_field, suite.label_field, suite.text_unit)
    return {"suite": suite.name, "task": suite.task, "metric": suite.metric,
            "value": metrics[suite.metric], "higher_is_better": suite.higher_is_better,
            "examples": len(records), "metrics": metrics,
            "data": {"sha256": card["sha256"], "bytes": card["bytes"], "records": card["records"]},
            "model": models.model_dir, "adapter": models.adapter_dir}


def evaluate_suite(model_dir: str, adapter_dir: str | None, suite: SuiteConfig,
                   progress: bool | None = False) -> dict:
    """Evaluate ``model_dir`` (+ the PEFT adapter in ``adapter_dir``) on one suite.

    Returns:
        ``{"suite", "task", "metric", "value", "higher_is_better", "examples", "metrics",
        "data" (sha256, bytes, records: never content), "model", "adapter"}``; ``metrics`` is
        ``{"perplexity", "loss", "tokens"}`` or ``{"accuracy", "macro_f1", "n"}``.
    Raises:
        UsageError: unloadable model, tokenizer or adapter; unreadable data; labels the
            classifier has no class for.
    """
    return evaluate_suites(model_dir, adapter_dir, [suite], progress)[0]


def evaluate_suites(model_dir: str, adapter_dir: str | None, suites: list[SuiteConfig],
                    progress: bool | None = False) -> list[dict]:
    """:func:`evaluate_suite` for several suites, loading the model once per task."""
    models = _Models(os.fspath(model_dir), os.fspath(adapter_dir) if adapter_dir else None)
    return [_run(models, suite, progress) for suite in suites]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) and abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def format_table(results: list[dict]) -> str:
    """A plain-text table: one row per suite, its headline metric first, then the others."""
    rows = [("suite", "task", "metric", "value", "examples", "other")]
    for r in results:
        others = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(r["metrics"].items()) if k != r["metric"])
        arrow = "↑" if r["higher_is_better"] else "↓"
        rows.append((r["suite"], r["task"], f"{r['metric']} {arrow}", _fmt(r["value"]),
                     str(r["examples"]), others))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
