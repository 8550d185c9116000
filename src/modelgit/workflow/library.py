"""The adapter library a release records: which reviewed adapters fit the release's base.

Every accepted contribution (merged into the weights) and every specialist (kept apart, reached
through a router) stays available as an adapter: its files are in the tree under
``<contributions>/<name>/`` (review merged the validated tree), whose safetensors are store
objects already, so the library is a record of pointers, never a second copy::

    "library": {"base": {"commit", "tag", "fingerprint", "model"},
                "adapters": [{"name", "path", "commit", "adapter_id", "decision", "domain",
                              "base_fingerprint", "scores": {suite: {"base", "adapter",
                              "gain_interval"?}}}],
                "refused": [{"name", "reason"}],
                "router": {"kind", "path", ...} | null}

The library's base is the weights the adapters were reviewed on: for a release that merges
contributions, its parent commit's model; for a release of specialists only (the weights stay),
the same weights, which are then the release's own. An adapter reviewed on another base is
refused with the reason (``modelgit rebase`` carries it over). Nothing a contributor wrote is
trusted here: names were checked by review, the base fingerprint is computed from the reviewed
commit's manifests, the domain and scores are review's, the content id is review's summary.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

from ..errors import ModelgitError, UsageError
from ..fingerprint import fingerprint_rev
from ..git.repo import GitRepo
from .contribution import check_name
from .project import Project
from .review_records import read_reviews, score_problems
from .validate import ContributionError

__all__ = ["LIBRARY_DECISIONS", "ROUTERS_DIR", "RouterJob", "build_router", "install_router", "library_record", "pending_specialists",
           "released_library_adapters"]

#: review decisions whose adapters join the library
LIBRARY_DECISIONS = ("accept", "specialist")
#: where a release's router is written: routers/<tag>/
ROUTERS_DIR = "routers"
_HEX = re.compile(r"^[0-9a-f]{40,64}$")


@dataclass(frozen=True)
class RouterJob:
    """What a release's router builder gets (see ``release(router=...)``).

    Attributes:
        repo: the repository; tag: the release's tag.
        library: the release's library record (``router`` None); its base is the commit's
            model, its adapters the tree's ``contributions/<name>/``.
        suites: the release's held-out suites (SuiteConfig): texts per domain, evaluation.
        merged: the released weights' directory (to evaluate the router beside them).
        output: the directory to write the router to (does not exist yet).
        progress: as the release's.
    """

    repo: GitRepo
    tag: str
    library: dict
    suites: list
    merged: str
    output: str
    progress: object = False


def released_library_adapters(releases: list[dict]) -> set[tuple[str, str | None]]:
    """(name, commit) of every adapter some release's library lists."""
    return {(a.get("name"), a.get("commit")) for r in releases
            for a in ((r.get("library") or {}).get("adapters") or []) if isinstance(a, dict)}


def pending_specialists(repo: GitRepo, releases: list[dict]) -> list[dict]:
    """Review records of specialists that no release's library lists yet (a release may be made
    of these alone: the weights stay, the library and its router change)."""
    listed = released_library_adapters(releases)
    return [review for name, review in sorted(read_reviews(repo).items())
            if review.get("decision") == "specialist"
            and (name, review.get("commit")) not in listed]


def _base_tag(repo: GitRepo, commit: str, fingerprint: str, model: str) -> str | None:
    """The newest tag reachable from ``commit`` whose weights are ``fingerprint`` (the release
    a contributor should train on, or `rebase` onto)."""
    tags = repo.git("tag", "--merged", commit, "--sort=-creatordate", "--list").decode().split()
    for tag in tags[:50]:
        try:
            if fingerprint_rev(repo, tag, model) == fingerprint:
                return tag
        except ModelgitError:
            continue
    return None


def _fingerprint_tags(repo: GitRepo, model: str) -> dict[str, str]:
    """{fingerprint: tag} of the repository's tags (newest first wins), to name old bases."""
    out: dict[str, str] = {}
    for tag in repo.git("tag", "--sort=creatordate", "--list").decode().split()[-50:]:
        try:
            out[fingerprint_rev(repo, tag, model)] = tag
        except ModelgitError:
            continue
    return out


def _scores(review: dict) -> dict:
    return {s: {"base": v["base"], "adapter": v["adapter"],
                **({"gain": v["gain"]} if isinstance(v.get("gain"), (int, float)) else {}),
                **({"gain_interval": v["gain_interval"]} if v.get("gain_interval") else {})}
            for s, v in (review.get("scores") or {}).items()}


def _entry(repo: GitRepo, project: Project, name: str, review: dict, commit: str) -> dict:
    """The library entry of one reviewed adapter (its ``base_fingerprint`` computed from the
    commit it was reviewed on). Raises UsageError with the reason it cannot be listed."""
    try:
        check_name(name)
    except ContributionError as exc:
        raise UsageError(f"not a contribution name ({'; '.join(exc.problems)})") from None
    problems = score_problems(review)
    if problems:
        raise UsageError(f"its review's scores cannot be trusted: {'; '.join(problems)}")
    base_revision = review.get("base_revision")
    adapter = review.get("adapter") if isinstance(review.get("adapter"), dict) else {}
    adapter_id = adapter.get("content_id")
    if not (isinstance(base_revision, str) and _HEX.match(base_revision)
            and isinstance(adapter_id, str) and _HEX.match(adapter_id)):
        raise UsageError("its review records no base revision or adapter content id (recorded "
                         "by an older modelgit?): review it again")
    path = f"{project.contributions}/{name}"
    if repo.read_blob(f"{commit}:{path}/adapter_model.safetensors") is None:
        raise UsageError(f"{path}/ is not in the tree of {commit[:12]}: the review's merge is "
                         "missing from this branch")
    try:
        base_fp = fingerprint_rev(repo, base_revision, project.model)
    except ModelgitError as exc:
        raise UsageError(f"the base it was reviewed on ({base_revision[:12]}) cannot be read: "
                         f"{exc}") from None
    return {"name": name, "path": path, "commit": review.get("commit"), "adapter_id": adapter_id,
            "decision": review["decision"], "domain": review.get("target_suite"),
            "base_fingerprint": base_fp, "scores": _scores(review)}


def library_record(repo: GitRepo, project: Project, commit: str, tag: str,
                   weights_stay: bool) -> dict:
    """The ``library`` of the release ``tag`` built on ``commit`` (the branch's head before the
    release commit).

    Args:
        commit: whose model is the library's base (the weights the adapters were reviewed on)
            and whose tree holds the adapters.
        weights_stay: the release merges nothing (specialists only): its weights are the base's,
            so the base's tag is the release's own when no earlier tag has these weights.
    Returns:
        The record (see the module docstring), ``router`` None.
    """
    fingerprint = fingerprint_rev(repo, commit, project.model)
    base_tag = _base_tag(repo, commit, fingerprint, project.model) or (tag if weights_stay else None)
    old_bases = None
    adapters, refused = [], []
    for name, review in sorted(read_reviews(repo, commit).items()):
        if review.get("decision") not in LIBRARY_DECISIONS:
            continue
        try:
            entry = _entry(repo, project, name, review, commit)
        except UsageError as exc:
            refused.append({"name": name, "reason": str(exc)})
            continue
        if entry["base_fingerprint"] == fingerprint:
            adapters.append(entry)
            continue
        if old_bases is None:
            old_bases = _fingerprint_tags(repo, project.model)
        theirs = old_bases.get(entry["base_fingerprint"])
        refused.append({"name": name, "reason": (
            f"trained on base {entry['base_fingerprint'][:12]}"
            + (f" ({theirs})" if theirs else "")
            + f", the library's base is {fingerprint[:12]}" + (f" ({base_tag})" if base_tag else "")
            + f": `modelgit rebase` it onto {base_tag or commit[:12]} and contribute it again")})
    return {"base": {"commit": commit, "tag": base_tag, "fingerprint": fingerprint,
                     "model": project.model},
            "adapters": adapters, "refused": refused, "router": None}


def build_router(router, job: RouterJob) -> tuple[str, dict] | None:
    """(the router's directory, what the record says of it), or None without a builder."""
    if router is None:
        return None
    if not job.library["adapters"]:
        refused = "; ".join(f"{r['name']}: {r['reason']}" for r in job.library["refused"][:5])
        raise UsageError("--router: the release's adapter library is empty, there is nothing to "
                         "route to" + (f" (refused: {refused})" if refused else ""))
    return job.output, router(job)


def install_router(repo: GitRepo, tag: str, built: str) -> None:
    """Move the built router to ``routers/<tag>/`` in the work tree (replacing a stale one)."""
    target = os.path.join(repo.root, ROUTERS_DIR, tag)
    if os.path.lexists(target):
        shutil.rmtree(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(built, target)
