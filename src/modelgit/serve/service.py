"""The state one app serves with: the catalog, its backend (model pool, engine and batcher),
the backends of the revisions its rollouts name, metrics and rollouts; and the choice of the
backend answering a request."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from ..errors import UsageError
from .api_errors import not_found
from .catalog import BASE, Target

__all__ = ["Service", "Choice"]


@dataclass(frozen=True)
class Choice:
    """A request's model: the name it asked for, the model serving it, its target and the
    :class:`~.backend.Backend` holding that model."""

    asked: str
    served: str
    target: Target
    rollout: str | None = None
    backend: object = field(default=None, compare=False)


class Service:
    """Args:
        catalog: a :class:`~.catalog.Catalog`; config: a :class:`~.config.ServeConfig`.
        source: the repository the catalog was read from (rollout variants may name its
            revisions; None: they name served models only).
    Raises:
        UsageError: a rollout naming neither a served model nor a revision of ``source``
            (naming the closest), or a rollout whose name hides a served model.
    """

    def __init__(self, catalog, config, source=None):
        from .backend import Backend
        from .metrics import Metrics
        from .rollout import Chooser

        self.catalog, self.config = catalog, config
        self.metrics = Metrics()
        self.rollouts = {r.name: r for r in config.rollouts}
        found = self._check_rollouts(source)
        events = self.metrics.adapter_events
        self.main = Backend(catalog, config, self.metrics,
                            on_load=lambda n: (events.labels("load").inc(), self._gauge()),
                            on_evict=lambda n: (events.labels("evict").inc(), self._gauge()))
        main = self.main
        self.pool, self.engine, self.batcher = main.pool, main.engine, main.batcher
        self.context, self.max_tokens_limit = main.context, main.max_tokens_limit
        self.threads = _set_threads(self.pool.model, config)
        #: {revision name: (backend, target)} of the revisions rollouts name
        self.revisions = self._open_revisions(source, found)
        #: {revision name: commit} (what ``--check`` reports)
        self.revision_commits = {name: r.commit for name, r in found.items()}
        self.chooser = Chooser(config.seed)

    def _gauge(self) -> None:
        self.metrics.adapters_loaded.set(len(self.pool.loaded))

    @property
    def backends(self) -> list:
        """Every backend, the served release's first."""
        out = [self.main]
        for backend, _ in self.revisions.values():
            if all(backend is not b for b in out):
                out.append(backend)
        return out

    def start(self) -> None:
        for backend in self.backends:
            backend.batcher.start()

    async def stop(self) -> None:
        for backend in reversed(self.backends):  # the main batcher owns the engine thread
            await backend.batcher.stop()

    def _check_rollouts(self, source) -> dict:
        """The rollouts' variants that are revisions of ``source`` rather than served models:
        ``{name: Revision}``."""
        from ..route.release_library import is_repository
        from .revisions import find_revision

        found = {}
        for rollout in self.rollouts.values():
            if rollout.name in self.catalog.names:
                raise UsageError(f"rollout {rollout.name!r} has the name of a served model: "
                                 "give the rollout another name")
            for variant, _ in rollout.variants:
                try:
                    self.catalog.resolve(variant)  # an unknown one names the closest
                    continue
                except UsageError as exc:
                    if source is None or not is_repository(source):
                        raise UsageError(f"rollout {rollout.name!r}: {exc}") from None
                if variant not in found:
                    try:
                        found[variant] = find_revision(source, variant)
                    except UsageError as exc:
                        raise UsageError(
                            f"rollout {rollout.name!r}: {variant!r} is neither a model this "
                            f"server serves ({', '.join(self.catalog.names)}) nor a revision "
                            f"of {source}: {exc}") from None
        clash = sorted(set(found) & set(self.rollouts))
        if clash:
            raise UsageError(f"rollout {clash[0]!r} has the name of a revision a rollout "
                             "serves: give the rollout another name")
        return found

    def _open_revisions(self, source, found: dict) -> dict:
        """A backend for each revision, sharing weights where the fingerprints are equal (the
        served base's answers a revision with the same weights)."""
        from ..adapters.loading import architecture_task
        from .backend import Backend
        from .catalog import Catalog
        from .revisions import revision_model_dir

        known = self.catalog.base_fingerprint
        shared = {known: self.main} if known else {}
        out = {}
        for name, revision in found.items():
            backend = shared.get(revision.fingerprint)
            if backend is None:
                model_dir = revision_model_dir(source, revision)
                catalog = Catalog(model_dir, {}, architecture_task(model_dir) or self.catalog.task,
                                  release=name)
                backend = shared[revision.fingerprint] = Backend(
                    catalog, self.config, self.metrics, executor=self.batcher.executor)
            out[name] = (backend, Target(BASE))
        return out

    @property
    def names(self) -> list[str]:
        held = [n for n in self.revisions if n not in self.catalog.names]
        return self.catalog.names + held + list(self.rollouts)

    def choose(self, name: str, headers) -> Choice:
        """The model serving a request for ``name`` (a rollout picks a variant).

        Raises:
            APIError: 404 for an unknown name, naming the closest.
        """
        rollout = self.rollouts.get(name)
        served = name
        if rollout is not None:
            served = self.chooser.choose(rollout, headers.get(self.config.sticky_header))
        if served in self.revisions:
            backend, target = self.revisions[served]
        else:
            backend = self.main
            try:
                target = self.catalog.resolve(served)
            except UsageError as exc:
                if served == self.catalog.unserved_release:  # says how to serve its weights
                    raise not_found(str(exc), "model", "model_not_found") from None
                match = difflib.get_close_matches(name, self.names, n=1)
                hint = f" (did you mean {match[0]!r}?)" if match else ""
                raise not_found(f"The model {name!r} does not exist{hint}. This server serves: "
                                f"{', '.join(self.names)}.", "model", "model_not_found") from None
        return Choice(name, served, target, rollout.name if rollout else None, backend)


def _set_threads(model, config) -> int:
    """torch's threads: the setting, else about 2 multiply-adds per weight per token of a full
    batch of 32-token inputs, within the idle cores (on a busy machine more threads stall each
    other)."""
    import torch

    from .._threads import choose_threads

    weights = sum(p.numel() for p in model.parameters())
    threads = config.threads or choose_threads(2 * weights * config.max_batch * 32)
    torch.set_num_threads(threads)
    return threads
