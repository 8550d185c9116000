"""``modelgit route eval``: routers against the base, each adapter alone, the oracle and a
merged model, per evaluation suite, with routing accuracy and the router's cost.

Per suite (a suites file of ``modelgit eval``):

* ``base`` and ``adapter NAME``: every input with the base alone, or with that one adapter;
* ``oracle``: the best of those on the suite (the adapter a perfect router would pick for that
  suite; the base when no adapter improves it);
* ``merged``: a merged model directory (the release), when given;
* ``router LABEL MODE``: each router in each mode asked for.

Each suite is scored once per target (the base and each adapter, every text alone in its
batch); a hard router's row is assembled from those per-text results (a text sent to adapter X
scores exactly as X scores it), so only soft mixes cost forward passes of their own.

``accuracy`` is the share of a suite's inputs that a hard decision sends where the oracle does
(for soft decisions: the adapter of largest weight). ``gain kept`` is the router's improvement
over the base divided by the oracle's (1.0: as good as the oracle). ``cost`` is the router's
CPU time per input divided by the CPU time of the base model's forward pass on the same input,
each input alone (``time.process_time``: every thread of this process, unaffected by other
processes' load, which wall time is not).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..errors import UsageError
from ..progress import progress_bar
from .library import BASE
from .router import Decision

__all__ = ["evaluate_routers", "format_report", "measure_cost"]

#: inputs per suite whose routing cost is timed (each alone, twice: router and base)
COST_SAMPLES = 8


@dataclass(frozen=True)
class _Suite:
    config: object
    texts: list
    labels: list | None


def _load_suite(suite, model) -> _Suite:
    from ..data import load_examples

    records = load_examples(suite.data, suite.text_field, suite.label_field,
                            suite.text_unit).take(suite.max_examples)
    texts = [r.text for r in records]
    if not texts:
        raise UsageError(f"suite {suite.name!r}: {suite.data} holds no text")
    labels = None
    if suite.task == "classification":
        # by name: each adapter names its own classes (adapters of different tasks have
        # different classes), and a prediction is named by the adapter that made it
        known = {str(v) for labels in model.runtime.adapter_labels.values() if labels
                 for v in labels.values()}
        if not known:
            known = {str(v) for v in model.runtime.model.get_base_model().config.id2label.values()}
        labels = [None if r.label is None else str(r.label) for r in records]
        unknown = sorted({label for label in labels if label not in known}, key=str)
        if unknown:
            raise UsageError(f"suite {suite.name!r}: {len(unknown)} label(s) no adapter has a class "
                             f"for ({', '.join(map(str, unknown[:10]))}; the adapters' classes: "
                             f"{', '.join(sorted(known)[:20])}): evaluate with data labelled like "
                             "the adapters' training data")
    return _Suite(suite, texts, labels)


def _fixed(name: str, count: int) -> list[Decision]:
    return [Decision(name, 1.0, {} if name == BASE else {name: 1.0})] * count


def _outcomes(model, suite: _Suite, decisions: list[Decision]) -> list:
    """Per-text results with these decisions: :class:`~.model.TextScore`\\ s (causal LM) or
    :class:`~.model.Classification`\\ s."""
    config = suite.config
    if config.task == "causal_lm":
        return model.score(suite.texts, config.batch_size, decisions, config.max_length)
    return model.classify(suite.texts, config.batch_size, decisions, config.max_length)


def _value(suite: _Suite, outcomes: list) -> float:
    """The suite's headline metric of per-text results."""
    from ..eval.metrics import accuracy, macro_f1

    config = suite.config
    if config.task == "causal_lm":
        tokens = sum(s.tokens for s in outcomes)
        if not tokens:
            raise UsageError(f"suite {config.name!r}: no text has two tokens")
        return math.exp(sum(s.nll * s.tokens for s in outcomes if s.tokens) / tokens)
    predicted = [c.label for c in outcomes]
    return (accuracy if config.metric == "accuracy" else macro_f1)(suite.labels, predicted)


def _metric(model, suite: _Suite, decisions: list[Decision]) -> float:
    """The suite's headline metric with these decisions."""
    return _value(suite, _outcomes(model, suite, decisions))


def _is_hard(decision: Decision) -> bool:
    return not decision.weights or decision.weights == {decision.adapter: 1.0}


def _routed_value(model, suite: _Suite, decisions: list[Decision], fixed: dict) -> float:
    """The metric of routed decisions. Hard decisions reuse the per-text results each target
    already gave alone (``fixed``: target -> outcomes; a text sent to adapter X is scored
    exactly as X scores it alone), so a hard router costs no forward pass; soft mixes run."""
    if all(_is_hard(d) and d.adapter in fixed for d in decisions):
        return _value(suite, [fixed[d.adapter][i] for i, d in enumerate(decisions)])
    return _metric(model, suite, decisions)


def _merged_metric(merged: str, suite) -> float:
    from ..eval import evaluate_suite

    return float(evaluate_suite(merged, None, suite)["value"])


def measure_cost(model, texts: list[str], max_length: int | None = None) -> dict:
    """The router's CPU time per input against the base's forward pass on the same input.

    Returns:
        ``{"ratio", "router_cpu_s", "base_cpu_s", "inputs"}``: sums over ``texts``, each run
        alone (batch of one), after one warm-up run of each.
    """
    import torch

    runtime = model.runtime
    if not texts:
        return {"ratio": None, "router_cpu_s": 0.0, "base_cpu_s": 0.0, "inputs": 0}
    model.route(texts[:1])  # warm-up: first-call allocations are not the router's cost
    router_s = base_s = 0.0
    for text in texts:
        start = time.process_time()
        model.route([text])
        router_s += time.process_time() - start
        batch = runtime.encode([text], max_length).batch
        start = time.process_time()
        with torch.no_grad(), runtime.base_only():
            runtime.model(**batch)
        base_s += time.process_time() - start
    return {"ratio": router_s / base_s if base_s else None, "router_cpu_s": router_s,
            "base_cpu_s": base_s, "inputs": len(texts)}


def _gain(value: float, base: float, oracle: float, higher: bool) -> float | None:
    best = (oracle - base) if higher else (base - oracle)
    if best <= 0:
        return None
    return ((value - base) if higher else (base - value)) / best


def _suite_report(models: list, labels: list, suite: _Suite, modes, merged, steps) -> dict:
    config, first = suite.config, models[0]
    higher = config.higher_is_better
    fixed = {BASE: _outcomes(first, suite, _fixed(BASE, len(suite.texts)))}
    values = {"base": _value(suite, fixed[BASE])}
    steps.update(1, at=f"{config.name}: base")
    for name in first.library.names:
        fixed[name] = _outcomes(first, suite, _fixed(name, len(suite.texts)))
        values[f"adapter {name}"] = _value(suite, fixed[name])
        steps.update(1, at=f"{config.name}: adapter {name}")
    candidates = {BASE: values["base"], **{n: values[f"adapter {n}"] for n in first.library.names}}
    oracle = (max if higher else min)(sorted(candidates), key=lambda n: candidates[n])
    values["oracle"] = candidates[oracle]
    if merged:
        values["merged"] = _merged_metric(merged, config)
        steps.update(1, at=f"{config.name}: merged")
    accuracy, gains, chosen = {}, {}, {}
    for model, label in zip(models, labels):
        for mode in modes:
            routed = model.with_settings(mode=mode)
            decisions = routed.route(suite.texts)
            row = f"router {label} {mode}"
            values[row] = _routed_value(routed, suite, decisions, fixed)
            accuracy[row] = sum(d.adapter == oracle for d in decisions) / len(decisions)
            gains[row] = _gain(values[row], values["base"], values["oracle"], higher)
            chosen[row] = {t: sum(d.adapter == t for d in decisions)
                           for t in sorted({d.adapter for d in decisions})}
            steps.update(1, at=f"{config.name}: {row}")
    return {"suite": config.name, "task": config.task, "metric": config.metric,
            "higher_is_better": higher, "examples": len(suite.texts), "oracle": oracle,
            "values": values, "routing_accuracy": accuracy, "gain_kept": gains, "chosen": chosen}


def evaluate_routers(models: list, suites: list, merged: str | None = None,
                     modes: tuple[str, ...] = ("hard", "soft"), labels: list[str] | None = None,
                     cost_samples: int = COST_SAMPLES, progress: bool | None = False) -> dict:
    """Evaluate routed models (sharing one library) on suites.

    Args:
        models: :class:`~.model.RoutedModel`\\ s over the same library (their runtime is the
            first's: the model is loaded once).
        suites: :class:`~modelgit.eval.SuiteConfig`\\ s.
        merged: a merged model directory to evaluate beside them (the release).
        modes: evaluate each router in these modes.
        labels: a name per router (default: its kind).
        cost_samples: inputs per suite timed for the cost (0: no timing).
    Returns:
        ``{"suites": [per-suite report], "cost": {label: measure_cost(...)}, "library": ...}``
        (see the module docstring for the rows).
    Raises:
        UsageError: no model or suite, routers over different libraries, unreadable suites.
    """
    if not models or not suites:
        raise UsageError("route eval needs at least one router and one suite")
    first = models[0]
    for model in models[1:]:
        if (model.library.base_fingerprint, model.library.names) != \
                (first.library.base_fingerprint, first.library.names):
            raise UsageError("the routers work over different libraries (base or adapters): "
                             "evaluate routers of one library together")
    labels = labels or [m.spec.kind for m in models]
    loaded = [_load_suite(s, first) for s in suites]
    per_suite = 1 + len(first.library.names) + bool(merged) + len(models) * len(modes)
    reports = []
    with progress_bar(per_suite * len(loaded), "route eval", progress, unit="step") as steps:
        for suite in loaded:
            reports.append(_suite_report(models, labels, suite, modes, merged, steps))
    cost = {}
    if cost_samples:
        sample = [t for s in loaded for t in s.texts[:cost_samples]]
        limit = min(s.config.max_length for s in loaded)
        for model, label in zip(models, labels):
            cost[label] = measure_cost(model, sample, limit)
    return {"suites": reports, "cost": cost, "library": {
        "base": first.library.base_dir, "base_fingerprint": first.library.base_fingerprint,
        "adapters": list(first.library.names)}}


def _cell(value, higher: bool | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def format_report(report: dict) -> str:
    """The table of :func:`evaluate_routers`: a row per model, a column per suite (the value,
    and for routers the share of the oracle's gain kept), then routing accuracy and cost."""
    suites = report["suites"]
    rows = list(suites[0]["values"])
    header = ["model", *[f"{s['suite']} ({s['metric']} {'↑' if s['higher_is_better'] else '↓'})"
                         for s in suites], "accuracy", "cost"]
    table = [header]
    for row in rows:
        cells = [row]
        for s in suites:
            cell = _cell(s["values"].get(row))
            gain = s["gain_kept"].get(row)
            if gain is not None:
                cell += f" ({100 * gain:.0f}%)"
            if row == "oracle":
                cell += f" [{s['oracle']}]"
            cells.append(cell)
        accuracies = [s["routing_accuracy"][row] for s in suites if row in s["routing_accuracy"]]
        cells.append(f"{100 * sum(accuracies) / len(accuracies):.0f}%" if accuracies else "")
        label = row.split(" ")[1] if row.startswith("router ") else None
        cost = report["cost"].get(label, {}).get("ratio") if label else None
        cells.append(f"{100 * cost:.1f}%" if cost is not None else "")
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    notes = ["(router cells: value (share of the oracle's gain over the base kept); oracle: "
             "[the best adapter of the suite]; accuracy: decisions equal to the oracle's; cost: "
             "router CPU time per input / base forward CPU time)"]
    return "\n".join(lines + notes)
