"""The collaborative loop: create a project, contribute, review (blind), release, rebase.

    create_project(path, base_dir, Project(...))      # maintainer: the repository + v1
    contribute(repo, adapter_dir, name, message)      # contributor: validate, commit, push
    review(repo, suites)                              # maintainer: blind evaluation + policy
    release(repo, suites, method="ties")              # maintainer: merge, card, tag
    rebase(repo, adapter_dir, onto, output, suites)   # contributor: carry onto a new base
"""

from __future__ import annotations

from .._lazy import lazy_exports

_LAZY = {"Project": "project", "Policy": "project", "Limits": "project", "read_project": "project",
         "create_project": "create", "contribute": "contribution", "Contribution": "contribution",
         "ContributionError": "validate", "validate_adapter": "validate", "review": "reviews",
         "ReviewReport": "reviews", "pending_contributions": "reviews", "release": "releases",
         "ReleaseResult": "releases", "rebase": "rebasing", "RebaseResult": "rebasing",
         "render_model_card": "card"}


__getattr__, __all__ = lazy_exports(__name__, _LAZY)
