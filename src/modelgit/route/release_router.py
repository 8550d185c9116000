"""The router of a release: built over its adapter library, evaluated beside its weights.

``modelgit release --router KIND`` passes a :class:`ReleaseRouter` to the workflow's release
(a callback: the workflow does not import this layer). It materializes the release's library
(:mod:`.release_library`), takes its examples from the release's own suites (each adapter's
domain suite: validation data first, so the held-out texts stay unseen; suites no adapter
covers are examples of "base") and from ``--router-examples NAME=FILE``, builds the router with
the route core (:func:`~.model.build_router`), writes it (``router.json`` +
``router.safetensors``) and evaluates it on the suites beside the base, each adapter, the oracle
and the released weights. ``routers/<tag>/`` and the record's ``library.router`` hold the result.

:func:`build_for_release` and :func:`evaluate_release` are the repository form of ``modelgit
route build/eval``: over the library of any release (``--rev``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError
from .library import BASE

__all__ = ["ReleaseRouter", "build_for_release", "evaluate_release", "summarize"]


@dataclass(frozen=True)
class ReleaseRouter:
    """How to build a release's router (the route core's :class:`~.router.BuildRequest`
    settings; the examples come from the suites and ``examples``).

    Attributes:
        kind: ``arrow``, ``examples`` or ``reviews``.
        examples: ``{adapter name or "base": file}`` texts that add to (or, for an adapter,
            replace) its domain suite's.
        evaluate: evaluate the router on the release's suites (recorded and shown).
        cost_samples: inputs per suite timed for the routing cost.
    """

    kind: str
    mode: str = "hard"
    top_k: int = 2
    threshold: float | None | str = "auto"
    embedder: str | None = None
    method: str = "centroid"
    examples: dict = field(default_factory=dict)
    max_examples: int = 50
    evaluate: bool = True
    cost_samples: int = 2

    def __call__(self, job) -> dict:
        """Build (and evaluate) the router for a workflow ``RouterJob``; write it to
        ``job.output``; return what the release record says of it."""
        from .release_library import ReleaseLibrary, materialize_library
        from .files import save_router

        library = materialize_library(job.repo, ReleaseLibrary(job.tag, job.library["base"]["commit"],
                                                               job.library), progress=job.progress)
        router = build_for_release(library, self, job.suites)
        save_router(router, job.output)
        record = describe(router)
        if self.evaluate and job.suites:
            from .model import RoutedModel

            report = evaluate_release(RoutedModel(router, library), job.suites, job.merged,
                                      self.cost_samples, job.progress)
            record.update(summarize(report))
        return record


def _examples(library, settings: ReleaseRouter, suites) -> tuple[dict, dict, dict]:
    """(examples {class: texts}, suite texts {suite: texts}, higher_is_better {suite: bool})."""
    from .texts import read_texts, suite_texts

    by_suite = {s.name: s for s in suites}
    texts = {s.name: suite_texts(s, settings.max_examples) for s in suites}
    examples: dict[str, list[str]] = {}
    for adapter in library.adapters:
        if adapter.domain in texts:
            examples[adapter.name] = list(texts[adapter.domain])
    covered = {a.domain for a in library.adapters}
    for name in sorted(set(by_suite) - covered):  # no adapter covers it: the base's inputs
        examples.setdefault(BASE, []).extend(texts[name])
    for name, path in settings.examples.items():
        if name != BASE:
            library.get(name)  # an unknown name is an error naming the closest
        given = read_texts(path, settings.max_examples)
        examples[name] = examples.get(name, []) + given if name == BASE else given
    return examples, texts, {s.name: s.higher_is_better for s in suites}


def build_for_release(library, settings: ReleaseRouter, suites):
    """Build ``settings.kind``'s router over ``library`` with examples from ``suites``.

    Raises:
        UsageError: an examples router with an adapter that has neither a domain suite nor
            ``examples``; see the route core's build for the rest.
    """
    from .model import build_router
    from .router import BuildRequest

    examples, texts, higher = _examples(library, settings, suites)
    if settings.kind == "examples":
        missing = [a.name for a in library.adapters if a.name not in examples]
        if missing:
            raise UsageError(f"the examples router needs texts for {', '.join(missing)}: their "
                             "domain suite is not among --suites; give --router-examples "
                             "NAME=FILE")
    scores = {a.name: a.scores for a in library.adapters if a.scores}
    if settings.kind == "reviews" and not texts:
        raise UsageError("the reviews router needs the suites' texts: give --suites")
    # a soft mix of two needs two adapters: a library of one mixes that one
    request = BuildRequest(kind=settings.kind, mode=settings.mode,
                           top_k=max(1, min(settings.top_k, len(library.adapters))),
                           threshold=settings.threshold, embedder=settings.embedder,
                           examples=examples if settings.kind != "reviews" else {},
                           suites=texts if settings.kind == "reviews" else {},
                           suite_scores=scores, higher_is_better=higher, method=settings.method)
    return build_router(library, request)


def describe(router) -> dict:
    """What a release record says of a router (its settings; ``path`` added by the release)."""
    spec = router.spec
    return {"kind": spec.kind, "mode": spec.mode, "top_k": spec.top_k,
            "threshold": spec.threshold, "embedder": spec.embedder,
            "adapters": [name for name, _ in spec.adapters]}


def evaluate_release(model, suites, merged: str | None, cost_samples: int = 2,
                     progress=False) -> dict:
    """The route core's evaluation of one routed model (its own mode) beside ``merged``."""
    from .evaluate import evaluate_routers

    return evaluate_routers([model], suites, merged, (model.spec.mode,), ["release"],
                            cost_samples, progress)


def summarize(report: dict) -> dict:
    """``evaluation`` rows (per suite: base, oracle, merged, router, accuracy, gain kept) and
    ``cost`` (the router's CPU time over the base's forward pass) of an evaluation report."""
    rows = []
    for suite in report["suites"]:
        values = suite["values"]
        row = next((k for k in values if k.startswith("router ")), None)
        rows.append({"suite": suite["suite"], "metric": suite["metric"],
                     "higher_is_better": suite["higher_is_better"], "oracle_adapter": suite["oracle"],
                     "base": values["base"], "oracle": values["oracle"],
                     "merged": values.get("merged"), "router": values.get(row),
                     "accuracy": suite["routing_accuracy"].get(row),
                     "gain_kept": suite["gain_kept"].get(row)})
    cost = next(iter(report.get("cost", {}).values()), None)
    return {"evaluation": rows, "cost": cost.get("ratio") if isinstance(cost, dict) else None}
