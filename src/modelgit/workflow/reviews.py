"""``modelgit review``: evaluate pending contributions blind, decide by policy, record it.

Blind in both senses. The held-out data stays with the maintainers: the suites file and its data
must not be tracked by the repository (refused otherwise), and reviews record only suite names,
scores and data hashes. And the reviewer does not know who contributed what: each contribution
is exported under a random anonymous id (a keyed hash of its commit with a secret drawn for this
run) without its metadata, evaluated under that id, and decided by the policy; the report shown
before the decision carries anonymous ids only. Names and authors are revealed when the
decisions are committed: one commit per contribution, ``reviews/<name>.json``; an accepted
contribution is merged (``git merge --no-ff``) so that its adapter joins the main line.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field

from .._files import write_json
from ..errors import ModelgitError, UsageError
from ..fingerprint import fingerprint_rev, tensor_infos_rev
from ..git.repo import GitRepo
from .contribution import BRANCH_PREFIX, CONTRIBUTION_FILE
from .basecache import evaluate_base
from .gitops import changed_paths, export_dir, git_identity, parse_author, require_clean, scratch_dir
from .policy import decide, relative_gain
from .project import Policy, Project, read_project
from .validate import ADAPTER_FILES, ContributionError, validate_adapter

__all__ = ["REVIEWS_DIR", "PendingContribution", "ReviewEntry", "ReviewReport", "pending_contributions",
           "review", "read_reviews", "check_heldout_private", "format_blind_report",
           "format_revealed"]

REVIEWS_DIR = "reviews"


@dataclass(frozen=True)
class PendingContribution:
    name: str
    ref: str
    commit: str
    record: dict


@dataclass
class ReviewEntry:
    """One contribution's review; ``contribution`` is None until the decision is recorded."""

    anon_id: str
    decision: str
    reasons: list[str]
    target_suite: str | None = None
    scores: dict = field(default_factory=dict)
    contribution: PendingContribution | None = field(default=None, repr=False)
    decided_by: str = "policy"

    def blind(self) -> dict:
        return {"anon_id": self.anon_id, "decision": self.decision, "decided_by": self.decided_by,
                "reasons": self.reasons, "target_suite": self.target_suite, "scores": self.scores}


@dataclass
class ReviewReport:
    base: dict  # {suite: result of the base}
    entries: list[ReviewEntry]
    recorded: bool = False
    commits: list[str] = field(default_factory=list)

    def blind(self) -> dict:
        return {"base": self.base, "contributions": [e.blind() for e in self.entries]}

    def revealed(self) -> list[dict]:
        if not self.recorded:
            raise UsageError("identities are revealed only after the decisions are recorded")
        return [{"anon_id": e.anon_id, "name": e.contribution.name,
                 "author": e.contribution.record.get("author"), "decision": e.decision}
                for e in self.entries]


def read_reviews(repo: GitRepo, rev: str = "HEAD") -> dict[str, dict]:
    """{contribution name: review record} committed in ``rev``."""
    out = {}
    listing = repo.git("ls-tree", "-z", "--name-only", f"{rev}:{REVIEWS_DIR}", check=False).decode()
    for name in filter(None, listing.split("\0")):
        if name.endswith(".json"):
            data = repo.read_blob(f"{rev}:{REVIEWS_DIR}/{name}")
            out[name[:-5]] = json.loads(data)
    return out


def _contribution_refs(repo: GitRepo, remote: str | None) -> dict[str, tuple[str, str]]:
    """{name: (ref, commit)}: remote-tracking branches of ``remote`` win over local ones."""
    patterns = [f"refs/heads/{BRANCH_PREFIX}"]
    if remote:
        patterns.insert(0, f"refs/remotes/{remote}/{BRANCH_PREFIX}")
    out = repo.git("for-each-ref", "--format=%(refname) %(objectname)", *patterns).decode()
    found: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        ref, commit = line.split()
        name = ref.split(BRANCH_PREFIX, 1)[1]
        if remote and ref.startswith("refs/heads/") and name in found:
            continue
        found.setdefault(name, (ref, commit))
    return found


def pending_contributions(repo: GitRepo, project: Project, remote: str | None = None,
                          fetch: bool = True) -> list[PendingContribution]:
    """Contribution branches without a review of their current commit on HEAD (after fetching
    ``contrib/*`` from ``remote``)."""
    if remote and fetch:
        repo.git("fetch", "-q", "--prune", remote,
                 f"+refs/heads/{BRANCH_PREFIX}*:refs/remotes/{remote}/{BRANCH_PREFIX}*")
    reviews = read_reviews(repo)
    pending = []
    for name, (ref, commit) in sorted(_contribution_refs(repo, remote).items()):
        if reviews.get(name, {}).get("commit") == commit:
            continue
        raw = repo.read_blob(f"{commit}:{project.contributions}/{name}/{CONTRIBUTION_FILE}")
        try:
            record = json.loads(raw) if raw else {}
        except ValueError:
            record = {}
        pending.append(PendingContribution(name, ref, commit, record if isinstance(record, dict) else {}))
    return pending


def check_heldout_private(repo: GitRepo, suites, files: tuple[str, ...] = ()) -> None:
    """Refuse held-out files (the suites' data and validation data, and ``files`` such as the
    suites file itself) that the repository tracks or would pick up with ``git add``:
    contributors must never see them."""
    root = os.path.realpath(repo.root)
    paths = [*files, *(p for s in suites for p in (s.data, getattr(s, "validation", None)) if p)]
    leaks = []
    for path in paths:
        real = os.path.realpath(path)
        if os.path.commonpath([real, root]) != root:
            continue
        rel = os.path.relpath(real, root)
        tracked = repo.git("ls-files", "--", rel).decode().strip()
        if tracked or not _ignored(repo, rel):
            leaks.append(rel)
    if leaks:
        raise UsageError(f"held-out files inside the repository would be shared with contributors: "
                         f"{', '.join(leaks)}: keep the suites file and its data outside the "
                         "repository (or list them in .git/info/exclude and untrack them)")


def _ignored(repo: GitRepo, rel: str) -> bool:
    import subprocess

    return subprocess.run(["git", "check-ignore", "-q", rel], cwd=repo.root).returncode == 0


def _review_secret(repo: GitRepo) -> bytes:
    """The maintainer's local secret behind the anonymous ids (``.git/modelgit/review-secret``,
    never pushed): an id is stable across runs, so a ``--dry-run`` report's ids can be used in
    ``--override``, yet nobody without the secret can link an id to a commit."""
    from .._files import write_atomic

    path = os.path.join(repo.git_dir, "modelgit", "review-secret")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, secrets.token_hex(32))
    with open(path, "rb") as handle:
        return handle.read().strip()


def _anon_id(secret: bytes, commit: str) -> str:
    return "anon-" + hmac.new(secret, commit.encode(), hashlib.sha256).hexdigest()[:8]


def _scores(base: list[dict], adapter: list[dict]) -> dict:
    out = {}
    for b, a in zip(base, adapter):
        out[b["suite"]] = {"metric": b["metric"], "base": b["value"], "adapter": a["value"],
                           "higher_is_better": b["higher_is_better"],
                           "gain": relative_gain(b["value"], a["value"], b["higher_is_better"])}
    return out


def _screen(repo: GitRepo, project: Project, item: PendingContribution, head_fp: str) -> list[str]:
    """Reasons to refuse without evaluating: paths outside the area, another base, bad record."""
    parents = repo.git("rev-list", "--parents", "-n", "1", item.commit).decode().split()[1:]
    if len(parents) != 1:
        return [f"the contribution commit has {len(parents)} parents; it must be one commit on "
                "top of a base revision (use `modelgit contribute`)"]
    area = f"{project.contributions}/{item.name}/"
    outside = [p for p in changed_paths(repo, parents[0], item.commit) if not p.startswith(area)]
    if outside:
        return [f"changes paths outside the contribution area {area}: {', '.join(outside[:5])}"]
    if not item.record:
        return [f"{area}{CONTRIBUTION_FILE} is missing or not valid JSON"]
    try:
        base_fp = fingerprint_rev(repo, parents[0], project.model)
    except UsageError as exc:
        return [f"its parent {parents[0][:12]} has no base model: {exc}"]
    if base_fp != head_fp:
        return [f"trained on an older base ({parents[0][:12]}): carry it onto the current base "
                "with `modelgit rebase` and contribute again"]
    return []


def _evaluate_one(repo, project, item, anon, head, base_dir, suites, base_results, progress, work):
    from ..eval import evaluate_suites

    adapter_dir = os.path.join(work, anon)
    export_dir(repo, item.commit, f"{project.contributions}/{item.name}", adapter_dir)
    for name in os.listdir(adapter_dir):  # only the adapter itself is evaluated, no metadata
        if name not in (*ADAPTER_FILES, "labels.json"):
            os.remove(os.path.join(adapter_dir, name))
    try:
        validate_adapter(adapter_dir, tensor_infos_rev(repo, head, project.model), project.limits)
    except ContributionError as exc:
        return None, exc.problems
    try:
        results = evaluate_suites(base_dir, adapter_dir, suites, progress)
    except ModelgitError as exc:
        return None, [f"evaluation failed: {exc}"]
    finally:
        shutil.rmtree(adapter_dir, ignore_errors=True)
    return _scores(base_results, results), []


def review(repo: GitRepo, suites, remote: str | None = "origin", policy: Policy | None = None,
           overrides: dict[str, str] | None = None, dry_run: bool = False,
           reviewer: str | None = None, progress: bool | None = False, on_blind=None,
           fetch: bool = True) -> ReviewReport:
    """Review every pending contribution against the suites (a list of SuiteConfig).

    Args:
        remote: fetch ``contrib/*`` branches from it first (None: local branches only).
        policy: overrides the project's policy (modelgit.yaml).
        overrides: {anonymous id: "accept" | "reject"}: the maintainer's decision instead of the
            policy's (from an earlier ``--dry-run`` report, which prints the ids).
        dry_run: evaluate and decide, record nothing (identities stay hidden).
        on_blind: called with the blind report before anything is recorded or revealed.
    Returns:
        A :class:`ReviewReport`; its ``revealed()`` names contributors once recorded.
    """
    project = read_project(repo)
    policy = policy or project.policy
    head = repo.rev_parse("HEAD")
    if head is None:
        raise UsageError("the repository has no commits: commit the base model first")
    require_clean(repo, [], "modelgit review")
    check_heldout_private(repo, suites)
    pending = pending_contributions(repo, project, remote, fetch)
    secret = _review_secret(repo)
    named = sorted(((_anon_id(secret, p.commit), p) for p in pending), key=lambda x: x[0])
    unknown = set(overrides or {}) - {a for a, _ in named}
    if unknown:
        raise UsageError(f"--override names unknown anonymous ids {sorted(unknown)}: use the ids "
                         "of a `modelgit review --dry-run` report of the pending contributions")
    head_fp = fingerprint_rev(repo, head, project.model)
    base_dir = os.path.join(repo.root, project.model)
    entries: list[ReviewEntry] = []
    base_results: list[dict] = []
    with scratch_dir(repo, "review-") as work:
        if named:
            base_results = evaluate_base(repo, base_dir, head_fp, suites, progress)
        for anon, item in named:
            reasons = _screen(repo, project, item, head_fp)
            scores = None
            if not reasons:
                scores, reasons = _evaluate_one(repo, project, item, anon, head, base_dir, suites,
                                                base_results, progress, work)
            if scores is None:
                entries.append(ReviewEntry(anon, "reject", reasons, contribution=item))
                continue
            decision, target, why = decide(scores, policy, item.record.get("domain"))
            entry = ReviewEntry(anon, decision, why, target, scores, item)
            if overrides and anon in overrides:
                entry.decision, entry.decided_by = overrides[anon], "maintainer"
            entries.append(entry)
    report = ReviewReport({r["suite"]: r for r in base_results}, entries)
    if on_blind:
        on_blind(report)
    if not dry_run and entries:
        _record(repo, report, policy, head, reviewer)
    return report


def _record(repo, report, policy, head, reviewer) -> None:
    name, email = parse_author(reviewer) if reviewer else git_identity(repo)
    who = f"{name} <{email}>"
    suite_info = {s: {"data_sha256": r["data"]["sha256"], "examples": r["examples"],
                      "metric": r["metric"]} for s, r in report.base.items()}
    os.makedirs(os.path.join(repo.root, REVIEWS_DIR), exist_ok=True)
    for entry in report.entries:
        item = entry.contribution
        record = {"review_version": 1, "anon_id": entry.anon_id, "contribution": item.name,
                  "author": item.record.get("author"), "commit": item.commit,
                  "base_revision": item.record.get("base_revision"), "reviewed_base": head,
                  "domain": item.record.get("domain"), "decision": entry.decision,
                  "decided_by": entry.decided_by, "reasons": entry.reasons,
                  "target_suite": entry.target_suite, "scores": entry.scores,
                  "suites": suite_info, "policy": {"min_gain": policy.min_gain,
                                                   "max_regression": policy.max_regression},
                  "adapter": item.record.get("adapter"), "reviewer": who,
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        title = f"Review {item.name}: {entry.decision}"
        if entry.decision == "accept":
            _merge_contribution(repo, item)
        path = os.path.join(repo.root, REVIEWS_DIR, f"{item.name}.json")
        write_json(path, record)
        repo.git("add", "--", f"{REVIEWS_DIR}/{item.name}.json")
        body = "\n".join(f"- {r}" for r in entry.reasons)
        repo.git("commit", "-q", "-m", f"{title}\n\n{body}\n\nModelgit-Review: {item.name}\n")
        report.commits.append(repo.rev_parse("HEAD"))
    report.recorded = True


def _merge_contribution(repo: GitRepo, item: PendingContribution) -> None:
    """``git merge --no-ff --no-commit`` of an accepted contribution; on a conflict the merge is
    aborted (the work tree is as before) and the error says what to do."""
    from ..git.repo import GitError

    try:
        repo.git("merge", "--no-ff", "--no-commit", "-q", item.commit)
    except GitError as exc:
        repo.git("merge", "--abort", check=False)
        raise UsageError(f"accepting {item.name} needs a merge of {item.commit[:12]} that git cannot "
                         f"make ({exc}); the reviews before it are committed. Resolve it by hand "
                         f"(git merge {item.commit[:12]}) or ask the contributor to contribute "
                         "again on the current base") from None


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def format_blind_report(report: ReviewReport) -> str:
    """The table shown before any identity is revealed: anonymous ids, scores, decisions."""
    suites = list(report.base)
    lines = ["blind review (anonymous ids; identities are revealed once the decisions are recorded)"]
    header = ["contribution", *[f"{s} ({report.base[s]['metric']})" for s in suites], "decision"]
    rows = [["base", *[_fmt(report.base[s]["value"]) for s in suites], ""]]
    for e in report.entries:
        cells = [f"{_fmt(e.scores[s]['adapter'])} ({e.scores[s]['gain']:+.1%})" if s in e.scores else "-"
                 for s in suites]
        rows.append([e.anon_id, *cells, e.decision + (" (maintainer)" if e.decided_by != "policy" else "")])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    for e in report.entries:
        lines.append(f"{e.anon_id}: " + "; ".join(e.reasons))
    return "\n".join(lines)


def format_revealed(report: ReviewReport) -> str:
    rows = report.revealed()
    return "recorded; identities:\n" + "\n".join(
        f"  {r['anon_id']} = {r['name']} by {r['author']}: {r['decision']}" for r in rows)
