"""Revisions as rollout variants: an A/B split between two releases of one repository.

A rollout variant that is not one of the server's models but a revision of the served
repository (a tag such as ``v1``, a branch, a commit id) names that revision's own weights:
``modelgit.yaml``'s ``model`` directory at its commit, materialized in the repository's cache
(:func:`~modelgit.route.release_library.materialize_tree`) and served as a model of that name
(the base alone; a revision's adapters are served by a server of that revision).

Weights are shared where they are equal, by fingerprint: a revision whose weights are the
served library's base is answered by that base (no memory), and revisions with equal weights
share one copy. Any other revision costs one more copy of its model in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["Revision", "find_revision", "revision_model_dir"]


@dataclass(frozen=True)
class Revision:
    """A revision of a repository and where its weights are.

    Attributes:
        name: the revision as the rollout gives it (and as clients name it).
        commit: the commit it resolved to at start.
        model_path: the model directory in that commit (``modelgit.yaml``'s ``model``).
        fingerprint: the fingerprint of its weights (from the manifests, nothing loaded).
    """

    name: str
    commit: str
    model_path: str
    fingerprint: str


def find_revision(source, name: str, commit: str | None = None) -> Revision:
    """The revision ``name`` of the repository ``source``.

    Args:
        commit: the commit ``name`` stands for, when the caller resolved it already.
    Raises:
        UsageError: ``name`` is no revision (naming the closest branch or tag), or its commit
            holds no model directory.
    """
    from ..fingerprint import fingerprint_rev
    from ..route.release_library import open_repository, tree_id
    from ..workflow.project import read_project

    repo = open_repository(source)
    if not name or name.startswith("-") or any(c.isspace() or not c.isprintable() for c in name):
        raise UsageError(f"{name!r} is not a revision name")
    commit = commit or repo.resolve(name, "revision")  # an unknown one names the closest tag
    model_path = read_project(repo, commit).model
    if tree_id(repo, commit, model_path) is None:
        raise UsageError(f"revision {name} ({commit[:12]}) has no model directory "
                         f"{model_path}/: give a revision of the model's history")
    return Revision(name, commit, model_path, fingerprint_rev(repo, commit, model_path))


def revision_model_dir(source, revision: Revision, progress: bool | None = False) -> str:
    """The revision's model directory, exported into the repository's cache (once)."""
    from ..route.release_library import materialize_tree

    return materialize_tree(source, revision.commit, revision.model_path, "model",
                            progress=progress)
