"""Review records: ``reviews/<name>.json`` on the main line, and how decisions are committed.

Every decision becomes one commit. An accepted contribution's commit (a specialist's too: its
files must be in the tree for the adapter library) is a merge with two
parents (the main line and the contribution's tip, so history shows what was merged), whose
tree is the main line's with ``<contributions>/<name>/`` replaced by the area's tree object that
review validated: not a re-resolved branch (it may have moved since) and not a three-way merge
(which could mix in what was not validated). The commits are built with a temporary index; the
branch and the work tree move once, at the end, by a fast-forward that git refuses rather than
overwrite anything. So whatever fails, nothing is half-recorded: no ``MERGE_HEAD``, nothing staged.
"""

from __future__ import annotations

import datetime
import math

from ..errors import FormatError, UsageError
from ..git.repo import GitError, GitRepo
from ..untrusted import dumps_json, loads_json
from .gitops import commit_edits, git_identity, parse_author

__all__ = ["REVIEWS_DIR", "read_reviews", "record_reviews", "score_problems"]

REVIEWS_DIR = "reviews"
_MAX_REVIEW_BYTES = 4 * 1024 * 1024


def read_reviews(repo: GitRepo, rev: str = "HEAD") -> dict[str, dict]:
    """{contribution name: review record} committed in ``rev``.

    Raises:
        FormatError: a review file that is not strict JSON (naming it).
    """
    out = {}
    listing = repo.git("ls-tree", "-z", "--name-only", f"{rev}:{REVIEWS_DIR}", check=False).decode()
    for name in filter(None, listing.split("\0")):
        if name.endswith(".json"):
            where = f"{rev}:{REVIEWS_DIR}/{name}"
            try:
                record = loads_json(repo.read_blob(where) or b"", where, _MAX_REVIEW_BYTES)
                if not isinstance(record, dict):
                    raise FormatError(f"{where}: not a JSON object")
            except FormatError as exc:  # e.g. a NaN score recorded by an older modelgit
                raise FormatError(f"{exc}: this review cannot be trusted; remove it (`git rm "
                                  f"{REVIEWS_DIR}/{name}`, commit) and review again") from None
            out[name[:-5]] = record
    return out


def score_problems(review: dict) -> list[str]:
    """A recorded review's scores must be finite numbers (reviews recorded before modelgit
    refused NaN scores may hold them)."""
    problems = []
    scores = review.get("scores")
    if not isinstance(scores, dict):
        return ["its scores are not a mapping"]
    for suite, score in sorted(scores.items()):
        values = [score.get(k) for k in ("base", "adapter")] if isinstance(score, dict) else [None]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in values):
            problems.append(f"suite {suite}: score {score!r} is not a pair of finite numbers")
    return problems


def _record(entry, policy, head: str, who: str, suite_info: dict) -> dict:
    item = entry.contribution
    claims = item.record  # contribution.json, checked (empty when it was refused unread)
    return {"review_version": 1, "anon_id": entry.anon_id, "contribution": item.name,
            "author": claims.get("author"), "commit": item.commit,
            "base_revision": entry.base, "reviewed_base": head,
            "domain": claims.get("domain"), "decision": entry.decision,
            "decided_by": entry.decided_by, "reasons": entry.reasons,
            "target_suite": entry.target_suite, "scores": entry.scores,
            "suites": suite_info, "policy": {"min_gain": policy.min_gain,
                                             "max_regression": policy.max_regression,
                                             "confidence": policy.confidence,
                                             "significant_regressions_only":
                                                 policy.significant_regressions_only,
                                             "specialist_min_gain":
                                                 getattr(policy, "specialist_min_gain", None)},
            "adapter": entry.adapter, "reviewer": who,  # the summary review computed, not a claim
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def record_reviews(repo: GitRepo, report, policy, head: str, reviewer: str | None,
                   contributions_dir: str) -> list[str]:
    """Commit one review per recordable entry of ``report`` on top of ``head`` (accepted ones as
    merges of their validated tree), then fast-forward the checked-out branch and work tree to
    the last. Returns the commits, oldest first.

    Raises:
        UsageError: git refused the fast-forward (HEAD moved, or an untracked file is in the
            way); nothing was recorded then.
    """
    name, email = parse_author(reviewer) if reviewer else git_identity(repo)
    who = f"{name} <{email}>"
    suite_info = {s: {"data_sha256": r["data"]["sha256"], "examples": r["examples"],
                      "metric": r["metric"]} for s, r in report.base.items()}
    tip, commits = head, []
    for entry in report.entries:
        if not entry.recordable:
            continue
        item = entry.contribution
        record = _record(entry, policy, head, who, suite_info)
        # a specialist is not merged into the weights, but its files join the main line: the
        # adapter library of the next release points at them
        accepted = entry.decision in ("accept", "specialist")
        if accepted and entry.tree is None:  # only an evaluated contribution has a tree to merge
            raise UsageError(f"{item.name} is {entry.decision} but was never validated; nothing "
                             "recorded")
        body = "\n".join(f"- {r}" for r in entry.reasons)
        tip = commit_edits(
            repo, tip, f"Review {item.name}: {entry.decision}\n\n{body}\n\nModelgit-Review: {item.name}\n",
            files={f"{REVIEWS_DIR}/{item.name}.json": dumps_json(record).encode()},
            trees={f"{contributions_dir}/{item.name}": entry.tree} if accepted else None,
            merged=(item.commit,) if accepted else ())
        commits.append(tip)
    if commits:
        try:
            repo.git("merge", "--ff-only", "-q", tip)
        except GitError as exc:
            raise UsageError(f"the reviews are decided but could not be recorded: git refused to "
                             f"move {repo.git('rev-parse', '--abbrev-ref', 'HEAD').decode().strip()} "
                             f"to them ({exc}). Nothing was recorded; remove what is in the way "
                             "(untracked files under reviews/ or the contributions), or review "
                             "again if HEAD moved") from None
    return commits
