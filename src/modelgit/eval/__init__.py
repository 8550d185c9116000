"""Evaluation suites on held-out data: perplexity for language models, accuracy and macro-F1
for classifiers; a base model alone or with a LoRA adapter, from local directories only."""

from __future__ import annotations

from .metrics import accuracy, classification_metrics, macro_f1, perplexity, predict_classes
from .bootstrap import gain_interval, interval
from .run import evaluate_suite, evaluate_suites, format_table, without_documents
from .suites import METRICS, SuiteConfig, load_suites, parse_suites

__all__ = ["METRICS", "SuiteConfig", "accuracy", "classification_metrics", "evaluate_suite",
           "evaluate_suites", "format_table", "gain_interval", "interval", "load_suites",
           "macro_f1", "parse_suites", "perplexity", "predict_classes", "without_documents"]
