"""What every router kind shares: its settings (:class:`RouterSpec`, the contents of
``router.json``), its tensors, the registry of kinds, and the step from per-input scores to
decisions (hard or soft, with the "base" threshold).

A kind is a module with two functions, registered under its name:

* ``build(runtime, request) -> Router`` — make the router for a library;
* ``scores(router, runtime, texts) -> Tensor (inputs, targets)`` — how well each target (the
  library's adapters, in order, then "base") fits each input; higher is better, ``-inf`` for a
  target the router cannot choose.

:func:`decide` turns scores into :class:`Decision`\\ s the same way for every kind.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace

from ..errors import UsageError
from .library import BASE

__all__ = ["Decision", "Router", "RouterSpec", "BuildRequest", "KINDS", "MODES", "kind_module",
           "decide", "calibrate_threshold", "FORMAT_VERSION"]

FORMAT_VERSION = 1
#: kind name -> module (under modelgit.route) implementing build() and scores()
KINDS = {"arrow": "arrow", "examples": "examples", "reviews": "reviews"}
MODES = ("hard", "soft")


def kind_module(kind: str):
    """The module of a router kind; UsageError naming the kinds when it is unknown."""
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown router kind {str(kind)[:40]!r}{hint}: use one of "
                         f"{', '.join(KINDS)}")
    return importlib.import_module(f"{__package__}.{KINDS[kind]}")


@dataclass(frozen=True)
class RouterSpec:
    """A router's settings: everything of ``router.json``.

    Attributes:
        kind: ``arrow``, ``examples`` or ``reviews``.
        mode: ``hard`` (one adapter per input, or base) or ``soft`` (a mix of the top-k).
        top_k: adapters mixed in soft mode.
        threshold: confidence below which an input goes to the base (None: never).
        temperature: of the softmax that turns scores into soft weights.
        embedder: ``base:LAYER`` or ``minilm`` (examples, reviews); None for arrow.
        base_fingerprint: the base the router was built for.
        adapters: ``((name, adapter_id), ...)`` in the router's order.
        classes: ``((class name, target), ...)``: what the router recognises and the adapter
            (or ``base``) each goes to (examples: one class per example file; reviews: one per
            suite); empty for arrow.
        settings: kind-specific settings (JSON values).
    """

    kind: str
    mode: str
    top_k: int
    threshold: float | None
    temperature: float
    embedder: str | None
    base_fingerprint: str
    adapters: tuple[tuple[str, str | None], ...]
    classes: tuple[tuple[str, str], ...] = ()
    settings: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.adapters)

    @property
    def targets(self) -> tuple[str, ...]:
        """The columns of a kind's scores: the adapters, then ``base``."""
        return (*self.adapter_names, BASE)

    def with_overrides(self, mode: str | None = None, top_k: int | None = None,
                       threshold: float | None | str = "keep",
                       temperature: float | None = None) -> "RouterSpec":
        """A copy with some settings changed (``threshold=None`` turns the threshold off)."""
        changes = {k: v for k, v in (("mode", mode), ("top_k", top_k),
                                     ("temperature", temperature)) if v is not None}
        if threshold != "keep":
            changes["threshold"] = threshold
        spec = replace(self, **changes)
        check_settings(spec.mode, spec.top_k, spec.temperature, len(spec.adapters))
        return spec


@dataclass(frozen=True)
class Router:
    """A router: its settings and its tensors (float32, CPU)."""

    spec: RouterSpec
    tensors: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class BuildRequest:
    """What ``route build`` asks for (kind-specific fields are ignored by the other kinds).

    Attributes:
        examples: ``{class: [texts]}`` (examples: a class per adapter, or ``base``).
        suites: ``{suite: [texts]}`` and ``suite_scores``: ``{adapter: {suite: {"base",
            "adapter"}}}`` with ``higher_is_better``: ``{suite: bool}`` (reviews).
        method: examples/reviews: ``centroid``, ``knn`` (``k`` neighbours) or ``linear`` (a
            logistic-regression probe, L2 strength ``l2``, default 1: see :mod:`.probe`).
        calibration_quantile: the threshold is this quantile of the examples' confidences.
    """

    kind: str
    mode: str = "hard"
    top_k: int = 2
    threshold: float | None | str = "auto"
    temperature: float | None = None
    embedder: str | None = None
    examples: dict = field(default_factory=dict, hash=False, compare=False)
    suites: dict = field(default_factory=dict, hash=False, compare=False)
    suite_scores: dict = field(default_factory=dict, hash=False, compare=False)
    higher_is_better: dict = field(default_factory=dict, hash=False, compare=False)
    method: str = "centroid"
    k: int = 5
    l2: float | None = None
    layers: int | None = None
    directions: int = 4
    route_tokens: int = 128
    calibration_quantile: float = 0.05


def check_settings(mode: str, top_k: int, temperature: float, adapters: int) -> None:
    """UsageError for a mode, top-k or temperature that cannot work."""
    if mode not in MODES:
        raise UsageError(f"unknown routing mode {str(mode)[:20]!r}: use hard or soft")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= max(adapters, 1):
        raise UsageError(f"top_k is {top_k!r}: it must be between 1 and the number of adapters "
                         f"({adapters})")
    if not (isinstance(temperature, (int, float)) and 0 < temperature <= 1e6):
        raise UsageError(f"temperature is {temperature!r}: it must be a positive number")


@dataclass(frozen=True)
class Decision:
    """Where one input goes.

    Attributes:
        adapter: the adapter with the largest weight, or ``base``.
        confidence: the router's confidence in its choice (compared with the threshold).
        weights: ``{adapter: weight}`` applied to the input's update (hard: one adapter at
            1.0; soft: the top-k's softmax weights; base: empty).
        scores: ``{target: score}`` of every target the router could choose.
    """

    adapter: str
    confidence: float
    weights: dict
    scores: dict = field(default_factory=dict, hash=False, compare=False)


def decide(scores, spec: RouterSpec, confidences=None) -> list[Decision]:
    """Decisions from a kind's scores (inputs, targets).

    Args:
        confidences: per input (default: its best score); below ``spec.threshold`` the input
            goes to the base.
    """
    import torch

    targets = spec.targets
    scores = scores.float()  # (inputs, targets)
    best = scores.max(dim=1)
    confidences = best.values if confidences is None else confidences
    out = []
    for row in range(scores.shape[0]):
        confidence = float(confidences[row])
        shown = {t: round(float(scores[row, i]), 6) for i, t in enumerate(targets)
                 if torch.isfinite(scores[row, i])}
        if spec.threshold is not None and confidence < spec.threshold:
            out.append(Decision(BASE, confidence, {}, shown))
            continue
        if spec.mode == "hard":
            choice = targets[int(best.indices[row])]
            out.append(Decision(choice, confidence, {} if choice == BASE else {choice: 1.0}, shown))
            continue
        k = min(spec.top_k, int(torch.isfinite(scores[row]).sum()))
        top = torch.topk(scores[row], k)
        mix = torch.softmax(top.values / spec.temperature, dim=0)  # (k,)
        weights = {targets[int(i)]: float(w) for i, w in zip(top.indices, mix)
                   if targets[int(i)] != BASE}
        choice = targets[int(top.indices[0])]
        out.append(Decision(choice, confidence, weights, shown))
    return out


def calibrate_threshold(confidences, quantile: float) -> float:
    """The threshold under which an input goes to the base: the ``quantile`` of the
    confidences of inputs known to belong to an adapter (their leave-one-out confidences), so
    that about that fraction of in-domain inputs would fall back to the base."""
    import torch

    values = torch.as_tensor(confidences, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise UsageError("no example to calibrate the threshold with: give examples, or "
                         "--threshold VALUE (or none)")
    return float(torch.quantile(values, quantile))
