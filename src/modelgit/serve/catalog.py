"""What a server serves: a base model, the adapters of its library, maybe a router, and the
model names clients use for them.

Sources: a model repository (its release's library, read and materialized by
:mod:`modelgit.route.release_library`), a router directory written by ``modelgit route build``
(its ``library.json``), a :class:`~modelgit.route.library.Library`, or a plain transformers
directory (the base alone).

Names: ``base`` (the library's base, the weights its adapters were reviewed on), each adapter's
name, and ``auto`` when there is a router (each input goes to the adapter the router picks for
it). The release's tag is an alias of ``base`` only when the release's weights *are* that base
(a release of specialists only). A release that merged contributions has new weights, which
are not the base its library's adapters apply to: its tag is then refused with the command that
serves those weights (one server, one base), never answered by other weights. A release
without a library (the first one, made by ``modelgit create``) serves its own weights as
``base`` and its tag.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field

from ..errors import UsageError

__all__ = ["Catalog", "Target", "open_catalog", "BASE", "AUTO"]

BASE, AUTO = "base", "auto"


@dataclass(frozen=True)
class Target:
    """What a model name resolves to: ``kind`` is ``base``, ``adapter`` or ``auto``."""

    kind: str
    adapter: str | None = None


@dataclass(frozen=True)
class Catalog:
    """The served base, adapters and router.

    Attributes:
        base_dir: the base model's transformers directory.
        adapters: ``{name: PEFT adapter directory}`` (loaded on demand).
        task: ``causal_lm`` or ``classification``.
        release: the release's tag (an alias of ``base``), when served from a repository.
        library: the :class:`~modelgit.route.library.Library` (None for a plain directory).
        router: a zero-argument function returning the :class:`~modelgit.route.RoutedModel`
            (None: no router, ``auto`` is refused).
    """

    base_dir: str
    adapters: dict
    task: str
    release: str | None = None
    library: object = None
    router: object = field(default=None, compare=False)
    #: a release whose merged weights this server does not serve (its tag is refused)
    unserved_release: str | None = None
    #: the fingerprint of the base's weights, when known (rollouts share weights by it)
    base_fingerprint: str | None = None

    @property
    def names(self) -> list[str]:
        """Every model name, in the order ``/v1/models`` lists them."""
        names = [BASE] + ([self.release] if self.release and self.release != BASE else [])
        return names + list(self.adapters) + ([AUTO] if self.router else [])

    def resolve(self, name) -> Target:
        """The target of a model name.

        Raises:
            UsageError: an unknown name, naming the closest one (or ``auto`` without a router).
        """
        if name == AUTO and self.router:
            return Target(AUTO)
        if name is not None and name == self.unserved_release:
            raise UsageError(f"the release {name} merged its contributions into new weights, "
                             "which this server does not serve: it serves the release's adapter "
                             f"library ({', '.join(self.names)}) on the base they were reviewed "
                             f"on. Serve {name}'s own weights with `modelgit serve REPO/model` "
                             f"in a checkout of {name} (or `modelgit export {name} --merged -o DIR` "
                             "and serve DIR), or hold them beside this library by naming "
                             f"{name} in a rollout (--rollout "
                             f"ab={self.release or BASE}:0.5,{name}:0.5)")
        if name in (BASE, self.release):
            return Target(BASE)
        if name in self.adapters:
            return Target("adapter", name)
        match = difflib.get_close_matches(str(name), self.names, n=1)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        extra = "; `auto` needs a release with a router" if name == AUTO else ""
        raise UsageError(f"the model {name!r} does not exist{hint}: this server serves "
                         f"{', '.join(self.names)}{extra}")


def open_catalog(source, rev: str | None = None, task: str | None = None) -> Catalog:
    """The catalog of ``source`` (see the module docstring).

    Args:
        source: a repository, a router directory, a plain model directory, or a Library.
        rev: the release of a repository (None: its newest).
        task: force ``causal_lm`` or ``classification`` (default: from the adapters or the
            model's architecture).
    Raises:
        UsageError: nothing servable at ``source``; an unknown release (naming the closest).
    """
    from ..route.library import Library
    from ..route.release_library import is_repository

    if isinstance(source, Library):
        return _from_library(source, None, None, task)
    source = os.fspath(source)
    if is_repository(source):
        return _from_repository(source, rev, task)
    if rev is not None:
        raise UsageError(f"--rev {rev} needs a model repository; {source!r} is not one "
                         "(a git work tree with modelgit.yaml)")
    if os.path.isfile(os.path.join(source, "router.json")):
        from ..route import load
        from ..route.model import _library_record

        return _from_library(_library_record(source), None, lambda: load(source), task)
    if os.path.isfile(os.path.join(source, "config.json")):
        from ..adapters.loading import architecture_task

        return Catalog(os.path.abspath(source), {}, task or architecture_task(source) or "causal_lm")
    raise UsageError(f"{source!r} is neither a model repository, a router directory nor a model "
                     "directory (config.json): give one of those")


def _from_library(library, release, router, task) -> Catalog:
    from ..route._runtime import _library_task

    return Catalog(library.base_dir, {a.name: a.directory for a in library.adapters},
                   task or _library_task(library), release, library, router,
                   base_fingerprint=library.base_fingerprint)


def _from_repository(source: str, rev: str | None, task) -> Catalog:
    from ..fingerprint import fingerprint_rev
    from ..route import load
    from ..route.release_library import materialize_library, open_repository, read_release

    release = read_release(source, rev, need_library=False)
    if release.record is None:  # the base of `modelgit create` (or an old release): its weights
        from ..adapters.loading import architecture_task
        from .revisions import find_revision, revision_model_dir

        revision = find_revision(source, release.tag, release.commit)
        model_dir = revision_model_dir(source, revision)
        return Catalog(model_dir, {}, task or architecture_task(model_dir) or "causal_lm",
                       release.tag, base_fingerprint=revision.fingerprint)
    library = materialize_library(source, release)
    router = (lambda: load(source, release.tag)) if release.router else None
    own = fingerprint_rev(open_repository(source), release.commit, release.record["base"]["model"])
    if own == library.base_fingerprint:
        return _from_library(library, release.tag, router, task)
    catalog = _from_library(library, release.record["base"].get("tag"), router, task)
    return dataclasses.replace(catalog, unserved_release=release.tag)
