"""``modelgit review``: evaluate pending contributions blind, decide by policy, record it.

Blind in both senses. The held-out data stays with the maintainers: the suites file and its data
must not be tracked by the repository (refused otherwise), and reviews record only suite names,
scores and data hashes. And the reviewer does not know who contributed what: each contribution
is evaluated under an anonymous id (a keyed hash of its commit) without its metadata, and decided
by the policy; the report shown before the decision carries anonymous ids only. Names and
authors are revealed when the decisions are committed (see :mod:`.review_records`).

Review is where trust is decided, so a contribution is read as hostile (see :mod:`.intake`):
from git's object database, the whole commit range checked, every path and mode checked, into a
directory modelgit creates; then every check of ``contribute`` runs again on what was read, plus
the claims of ``contribution.json`` against the commits. Whatever goes wrong with one
contribution (a refusal, a missing object, an unreadable file, an evaluation that fails or
scores NaN) is a rejection of that one with its reason; the others are still reviewed.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field, replace

from ..errors import ModelgitError, UsageError
from ..fingerprint import fingerprint_rev, tensor_infos_rev
from ..git.repo import GitRepo
from .contribution import BRANCH_PREFIX, check_name, training_base_problems
from .gitops import require_clean, scratch_dir
from .intake import receive
from .metadata import record_problems
from .policy import decide, relative_gain
from .project import Policy, Project, read_project
from .review_records import REVIEWS_DIR, read_reviews, record_reviews
from .validate import ADAPTER_FILES, ContributionError, validate_adapter

__all__ = ["REVIEWS_DIR", "DECISIONS", "PendingContribution", "ReviewEntry", "ReviewReport", "pending_contributions",
           "review", "read_reviews", "check_heldout_private", "format_blind_report",
           "format_revealed"]

#: files of a contribution that evaluation sees (no metadata: it could identify the author)
_EVALUATED = (*ADAPTER_FILES, "labels.json")


@dataclass(frozen=True)
class PendingContribution:
    name: str  # from the branch name: checked before it is used for anything
    ref: str
    commit: str
    record: dict = field(default_factory=dict)  # contribution.json, once read and checked


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
    base: str | None = None  # the main-line commit it was built on (once checked)
    tree: str | None = None  # the area's tree that was validated and evaluated: what is merged
    adapter: dict | None = None  # the summary validation computed
    recordable: bool = True  # False when the branch's name cannot name a review file

    def blind(self) -> dict:
        return {"anon_id": self.anon_id, "decision": self.decision, "decided_by": self.decided_by,
                "reasons": self.reasons, "target_suite": self.target_suite, "scores": self.scores}


@dataclass
class ReviewReport:
    base: dict  # {suite: result of the base}
    entries: list[ReviewEntry]
    recorded: bool = False
    commits: list[str] = field(default_factory=list)
    pushed_to: str | None = None  # the remote the recorded reviews were pushed to

    def blind(self) -> dict:
        return {"base": self.base, "contributions": [e.blind() for e in self.entries]}

    def revealed(self) -> list[dict]:
        if not self.recorded:
            raise UsageError("identities are revealed only after the decisions are recorded")
        return [{"anon_id": e.anon_id, "name": e.contribution.name,
                 "author": e.contribution.record.get("author"), "decision": e.decision,
                 "recorded": e.recordable}
                for e in self.entries]


def _contribution_refs(repo: GitRepo, remote: str | None) -> dict[str, tuple[str, str]]:
    """{name: (ref, commit)}: remote-tracking branches of ``remote`` win over local ones."""
    patterns = [f"refs/heads/{BRANCH_PREFIX}"]
    if remote:
        patterns.insert(0, f"refs/remotes/{remote}/{BRANCH_PREFIX}")
    out = repo.git("for-each-ref", "--format=%(refname) %(objectname)", *patterns).decode()
    found: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        ref, commit = line.rsplit(" ", 1)
        name = ref.split(BRANCH_PREFIX, 1)[1]
        if remote and ref.startswith("refs/heads/") and name in found:
            continue
        found.setdefault(name, (ref, commit))
    return found


def pending_contributions(repo: GitRepo, project: Project, remote: str | None = None,
                          fetch: bool = True) -> list[PendingContribution]:
    """Contribution branches without a review of their current commit on HEAD (after fetching
    ``contrib/*`` from ``remote``). Nothing of them is read yet: names are the branches'."""
    if remote and fetch:
        repo.git("fetch", "-q", "--prune", remote,
                 f"+refs/heads/{BRANCH_PREFIX}*:refs/remotes/{remote}/{BRANCH_PREFIX}*")
    reviews = read_reviews(repo)
    return [PendingContribution(name, ref, commit)
            for name, (ref, commit) in sorted(_contribution_refs(repo, remote).items())
            if reviews.get(name, {}).get("commit") != commit]


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


@dataclass(frozen=True)
class _Context:
    """What every contribution of one review is checked and evaluated against."""

    repo: GitRepo
    project: Project
    policy: Policy
    head: str
    head_fp: str
    base_tensors: dict
    base_dir: str
    suites: list
    progress: bool | None
    work: str


def _scores(base: list[dict], adapter: list[dict], confidence: float) -> tuple[dict, list[str]]:
    """({suite: scores}, problems): a score that is not a finite number is a problem. Each
    suite's scores carry their ``confidence`` bootstrap intervals over the suite's documents,
    and the interval of the gain (base and adapter resampled on the same documents)."""
    from ..eval import gain_interval, interval

    out, problems = {}, []
    for b, a in zip(base, adapter):
        value = a["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{b['suite']}: the adapter's {b['metric']} is {value!r}, not a finite "
                            "number: the adapter breaks the model")
            continue
        docs_b, docs_a = b.get("documents"), a.get("documents")
        out[b["suite"]] = {"metric": b["metric"], "base": b["value"], "adapter": value,
                           "higher_is_better": b["higher_is_better"],
                           "gain": relative_gain(b["value"], value, b["higher_is_better"]),
                           "confidence": confidence,
                           "base_interval": interval(docs_b, b["metric"], confidence) if docs_b else None,
                           "adapter_interval": interval(docs_a, b["metric"], confidence) if docs_a else None,
                           "gain_interval": gain_interval(docs_b, docs_a, b["metric"],
                                                          b["higher_is_better"], confidence)
                           if docs_b and docs_a else None}
    return out, problems


def _name_problem(name: str) -> str | None:
    try:
        check_name(name)
    except ContributionError:
        return (f"its branch name is not a contribution name (1-63 characters of a-z, 0-9, '.', "
                f"'_', '-'): it is not recorded; delete the branch {BRANCH_PREFIX}<name> or "
                "contribute again under a valid name")
    return None


def _claims_problems(ctx: _Context, name: str, received) -> list[str]:
    """contribution.json against the commits: its fields, the base it names, the fingerprints."""
    record = received.record
    problems = record_problems(record, name)
    if problems:
        return problems
    if record["base_revision"] != received.base:
        return [f"contribution.json names the base revision {record['base_revision'][:12]}, but "
                f"its commits are built on {received.base[:12]}"]
    base_fp = fingerprint_rev(ctx.repo, received.base, ctx.project.model)
    if base_fp != ctx.head_fp:
        return [f"trained on an older base ({received.base[:12]}): carry it onto the current base "
                "with `modelgit rebase` and contribute again"]
    if record["base_fingerprint"] != base_fp:
        return [f"contribution.json names the base fingerprint {record['base_fingerprint'][:12]}..., "
                f"but its base revision's is {base_fp[:12]}..."]
    return training_base_problems(received.directory, base_fp, received.base[:12])


def _prepare(ctx: _Context, entry: ReviewEntry, directory: str) -> tuple[str, dict]:
    """Read, check and validate ``entry``'s contribution into ``directory``, leaving only the
    adapter itself there (no metadata: evaluation must not see who sent it), and fill ``entry``
    in as facts are established (its checked record and base; the validated tree is kept aside
    until it has been evaluated). A refusal raises ContributionError."""
    item = entry.contribution
    parts = [*ctx.project.contributions.split("/"), item.name]
    received = receive(ctx.repo, parts, item.commit, ctx.head, directory, ctx.project.limits)
    problems = _claims_problems(ctx, item.name, received)
    if problems:
        raise ContributionError(item.name, problems)
    entry.contribution, entry.base = replace(item, record=received.record), received.base
    from ..merge.task_heads import base_model_type

    summary = validate_adapter(directory, ctx.base_tensors, ctx.project.limits, ctx.project.labels,
                               base_model_type(ctx.base_dir), ctx.project.classifier)
    for name in os.listdir(directory):  # only the adapter itself is evaluated, no metadata
        if name not in _EVALUATED:
            os.remove(os.path.join(directory, name))
    return received.tree, summary


def _reject(entry: ReviewEntry, reasons: list[str]) -> ReviewEntry:
    entry.decision, entry.reasons, entry.target_suite, entry.scores = "reject", reasons, None, {}
    entry.tree = entry.adapter = None  # nothing of it may be merged
    return entry


def _failure_reasons(exc: BaseException) -> list[str]:
    if isinstance(exc, ContributionError):
        return exc.problems
    if isinstance(exc, (ModelgitError, OSError)):
        return [f"could not be read or evaluated: {exc}"]
    return [f"review failed unexpectedly on it ({type(exc).__name__}: {str(exc)[:300]}): "
            "refused to be safe; please report this as a modelgit bug"]


def _prepare_one(ctx: _Context, anon: str, item: PendingContribution):
    """(entry, directory, validated tree, summary) of one contribution, or (rejected entry,
    None, None, None): whatever fails before evaluation is its rejection, with the reason."""
    entry = ReviewEntry(anon, "reject", [], contribution=item)
    problem = _name_problem(item.name)
    if problem:
        entry.reasons, entry.recordable = [problem], False
        return entry, None, None, None
    directory = tempfile.mkdtemp(prefix=f"{anon}-", dir=ctx.work)
    try:
        tree, summary = _prepare(ctx, entry, directory)
        return entry, directory, tree, summary
    except BaseException as exc:  # noqa: BLE001  a stranger's file must not stop the other reviews
        shutil.rmtree(directory, ignore_errors=True)
        if not isinstance(exc, Exception):
            raise
        return _reject(entry, _failure_reasons(exc)), None, None, None


def _decide(ctx: _Context, entry: ReviewEntry, base_results: list[dict], outcome, tree,
            summary) -> ReviewEntry:
    """The decision on one evaluated contribution (``outcome``: its results or failure)."""
    from ..eval.parallel import EvalFailure

    if isinstance(outcome, EvalFailure):
        return _reject(entry, [f"could not be read or evaluated: {outcome.message}"] if outcome.expected
                       else [f"review failed unexpectedly on it ({outcome.type_name}: "
                             f"{outcome.message}): refused to be safe; please report this as a "
                             "modelgit bug"])
    try:
        scores, problems = _scores(base_results, outcome, ctx.policy.confidence)
        if problems:
            raise ContributionError(entry.contribution.name, problems)
        decision, target, why = decide(scores, ctx.policy, entry.contribution.record.get("domain"))
    except Exception as exc:  # noqa: BLE001
        return _reject(entry, _failure_reasons(exc))
    entry.decision, entry.reasons, entry.target_suite, entry.scores = decision, why, target, scores
    entry.tree, entry.adapter = tree, summary
    return entry


def _evaluate_all(ctx: _Context, named, jobs: int | None) -> tuple[list[dict], list[ReviewEntry]]:
    """(base results, entries): every contribution prepared one by one (git and validation),
    then the base (unless cached) and every valid adapter evaluated together (see
    :mod:`modelgit.eval.parallel`), then each decided."""
    from ..eval.parallel import EvalJob, evaluate_jobs
    from .basecache import cached_base, remember_base

    prepared = [_prepare_one(ctx, anon, item) for anon, item in named]
    base_results, missing = cached_base(ctx.repo, ctx.head_fp, ctx.suites)
    todo = [EvalJob(ctx.base_dir, None, tuple(ctx.suites[i] for i in missing))] if missing else []
    todo += [EvalJob(ctx.base_dir, directory, tuple(ctx.suites))
             for _, directory, _, _ in prepared if directory]
    names = {directory: entry.anon_id for entry, directory, _, _ in prepared if directory}
    outcomes = evaluate_jobs(todo, ctx.progress, ctx.policy.confidence, jobs,
                             label=lambda job: names.get(job.adapter_dir, "the base"))
    if missing:
        fresh = outcomes.pop(0)
        if not isinstance(fresh, list):
            raise UsageError(f"the base model could not be evaluated: {fresh.message}")
        remember_base(ctx.repo, ctx.head_fp, ctx.suites, missing, fresh, base_results)
    _check_base_results(base_results)
    outcomes = iter(outcomes)
    entries = []
    for entry, directory, tree, summary in prepared:
        if directory:
            entry = _decide(ctx, entry, base_results, next(outcomes), tree, summary)
            shutil.rmtree(directory, ignore_errors=True)
        entries.append(entry)
    return base_results, entries


#: what a review decides: merged by the next release; refused; kept in the adapter library only
DECISIONS = ("accept", "reject", "specialist")


def _override(entry: ReviewEntry, decision: str) -> None:
    if entry.tree is None:  # refused before evaluation: nothing validated that could be merged
        entry.reasons.append(f"the maintainer's override ({decision}) was not applied: the "
                             "contribution was refused before it could be evaluated")
        return
    entry.decision, entry.decided_by = decision, "maintainer"


def review(repo: GitRepo, suites, remote: str | None = "origin", policy: Policy | None = None,
           overrides: dict[str, str] | None = None, dry_run: bool = False,
           reviewer: str | None = None, progress: bool | None = False, on_blind=None,
           fetch: bool = True, push: str | None = None, jobs: int | None = None) -> ReviewReport:
    """Review every pending contribution against the suites (a list of SuiteConfig).

    Args:
        remote: fetch ``contrib/*`` branches from it first (None: local branches only).
        policy: overrides the project's policy (modelgit.yaml).
        overrides: {anonymous id: "accept" | "reject" | "specialist"}: the maintainer's
            decision instead of the policy's (from an earlier ``--dry-run`` report, which prints the ids). A contribution
            refused before evaluation stays refused.
        dry_run: evaluate and decide, record nothing (identities stay hidden).
        on_blind: called with the blind report before anything is recorded or revealed.
        push: push the branch to this remote once the decisions are recorded (nothing is
            pushed by a dry run or when nothing was recorded).
        jobs: evaluate this many models at once in worker processes (None: as many as the
            work's size, the idle cores and the memory allow; 1: one after another).
    Returns:
        A :class:`ReviewReport`; its ``revealed()`` names contributors once recorded.
    Raises:
        UsageError: a dirty work tree, held-out files in the repository, unknown override ids,
            a base that scores a non-finite number, or a recording that git refused (nothing is
            recorded then). A problem of one contribution is never raised: it is its rejection.
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
    wrong = sorted(f"{a}={d}" for a, d in (overrides or {}).items() if d not in DECISIONS)
    if wrong:
        raise UsageError(f"--override {', '.join(wrong)}: a decision is one of "
                         f"{', '.join(DECISIONS)}")
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
            ctx = _Context(repo, project, policy, head, head_fp,
                           tensor_infos_rev(repo, head, project.model), base_dir, suites,
                           progress, work)
            base_results, entries = _evaluate_all(ctx, named, jobs)
        for entry in entries:
            if overrides and entry.anon_id in overrides:
                _override(entry, overrides[entry.anon_id])
    report = ReviewReport({r["suite"]: {k: v for k, v in r.items() if k != "documents"}
                           for r in base_results}, entries)
    if on_blind:
        on_blind(report)
    if not dry_run and entries:
        report.commits = record_reviews(repo, report, policy, head, reviewer, project.contributions)
        report.recorded = True
        if push and report.commits:
            repo.git("push", "-q", push, "HEAD")
            report.pushed_to = push
    return report


def _check_base_results(results: list[dict]) -> None:
    bad = [f"{r['suite']} ({r['metric']} {r['value']!r})" for r in results
           if isinstance(r["value"], bool) or not isinstance(r["value"], (int, float))
           or not math.isfinite(r["value"])]
    if bad:
        raise UsageError(f"the base model scores a non-finite number on {', '.join(bad)}: no "
                         "contribution can be compared with it; check the suites' data and settings")


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _pct(span) -> str:
    return f" [{span[0] * 100:+.1f}, {span[1] * 100:+.1f}]" if span else ""


def format_blind_report(report: ReviewReport) -> str:
    """The table shown before any identity is revealed: anonymous ids, scores (with the gain
    and its interval, in percent), decisions."""
    suites = list(report.base)
    level = next((s.get("confidence") for e in report.entries for s in e.scores.values()), None)
    lines = ["blind review (anonymous ids; identities are revealed once the decisions are recorded)"]
    if level:
        lines.append(f"each score: value (relative gain % [{level:.0%} bootstrap interval over "
                     "the documents])")
    header = ["contribution", *[f"{s} ({report.base[s]['metric']})" for s in suites], "decision"]
    rows = [["base", *[_fmt(report.base[s]["value"]) for s in suites], ""]]
    for e in report.entries:
        cells = [f"{_fmt(e.scores[s]['adapter'])} ({e.scores[s]['gain']:+.1%}"
                 f"{_pct(e.scores[s].get('gain_interval'))})" if s in e.scores else "-"
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
        f"  {r['anon_id']} = {r['name'] if r['name'].isprintable() else repr(r['name'])} by "
        f"{r['author']}: {r['decision']}"
        + ("" if r["recorded"] else " (not recorded: not a valid contribution name)") for r in rows)
