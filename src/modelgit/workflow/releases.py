"""``modelgit release``: merge the accepted contributions into the base, evaluate, card, tag.

The accepted contributions since the last release (``reviews/*.json`` with ``decision: accept``,
not yet named by a ``releases/*.json``) are merged into the base with a merge recipe (TIES by
default) through the merge engine, each as ``BASE+ADAPTER``. Optionally a gradient-free search
picks the recipe's ``lambda`` (scale of the merged update) and ``density`` on the suites'
validation data. The result is evaluated on every suite, written over the base's weights (same
file names, so unchanged tensors keep their object ids and only changed ones travel), and
committed with the model card (``<model>/README.md``) and the release record
(``releases/<tag>.json``); the commit is tagged.

Every release also records its adapter library (see :mod:`.library`): the accepted and specialist
adapters reviewed on the weights it started from. A release may be made of specialists alone:
the weights stay, the library (and its router) change. With a router builder (``release
--router KIND``: :mod:`modelgit.route.release_router`, called through a callback so that this
layer does not import the one above it) the release's router is built over that library and
committed under ``routers/<tag>/`` in the same commit.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import re
import shutil
from dataclasses import dataclass, replace

import yaml

from .._files import write_atomic
from ..errors import FormatError, UsageError
from ..git.repo import GitRepo
from ..fingerprint import fingerprint_rev
from .basecache import evaluate_base
from .gitops import require_clean, scratch_dir
from .policy import relative_gain
from .project import Project, read_project
from ..untrusted import dumps_json, load_json_file, loads_json
from .contribution import check_name
from .derived_release import PLAN_FILE, derive_merge, record_derived
from .library import (ROUTERS_DIR, RouterJob, build_router as _build_router, install_router as _install_router,
                      library_record, pending_specialists)
from .metadata import record_problems
from .review_records import REVIEWS_DIR, score_problems
from .reviews import check_heldout_private, read_reviews

__all__ = ["RELEASES_DIR", "ReleaseResult", "accepted_contributions", "build_recipe", "release",
           "read_releases", "next_tag", "search_recipe"]

RELEASES_DIR = "releases"
_MAX_RECORD_BYTES = 16 * 1024 * 1024
DEFAULT_PARAMETERS = {"ties": {"density": 0.5}, "dare_ties": {"density": 0.5},
                      "dare_linear": {"density": 0.5}, "della": {"density": 0.5}}
#: the search's grid: lambda (scale of the merged update) and density
LAMBDAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
DENSITIES = (0.2, 0.35, 0.5, 0.7, 0.9)
WEIGHTS = (0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass
class ReleaseResult:
    """A release (``commit`` None for a dry run, which changed nothing); ``record`` as
    ``releases/<tag>.json`` holds it, with ``comparison`` when several methods were compared."""

    tag: str
    commit: str | None
    record: dict
    pushed_to: str | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class _Candidate:
    """One method's merge of the accepted contributions, evaluated."""

    method: str
    params: dict
    recipe: dict
    search: dict | None
    merged: str  # its directory in the scratch space
    results: list  # on the suites
    objective: float  # mean relative gain on the selection data (validation, else the suites)


def read_releases(repo: GitRepo, rev: str = "HEAD") -> list[dict]:
    """The release records of ``rev``, oldest first."""
    listing = repo.git("ls-tree", "-z", "--name-only", f"{rev}:{RELEASES_DIR}", check=False).decode()
    records = []
    for name in filter(None, listing.split("\0")):
        if name.endswith(".json"):
            where = f"{rev}:{RELEASES_DIR}/{name}"
            record = loads_json(repo.read_blob(where) or b"", where, _MAX_RECORD_BYTES)
            if not isinstance(record, dict):
                raise UsageError(f"{where} is not a JSON object: fix or remove it")
            records.append(record)
    return sorted(records, key=lambda r: (str(r.get("date") or ""), str(r.get("tag") or "")))


def accepted_contributions(repo: GitRepo, project: Project) -> list[dict]:
    """Review records of accepted contributions that no release has merged yet.

    A release credits each contribution with the commit that was reviewed, so a second version
    of a released contribution (contributed again with ``--replace``, trained on the release,
    reviewed and accepted) is pending again; a release record without commits (none written by
    this version) counts by name.
    """
    released = {(c["name"], c.get("commit")) for r in read_releases(repo)
                for c in r.get("contributions", [])}
    out = []
    for name, review in sorted(read_reviews(repo).items()):
        if review.get("decision") != "accept" or {(name, review.get("commit")), (name, None)} & released:
            continue
        check_name(name)  # it becomes a path of the recipe
        problems = score_problems(review)
        if problems:
            raise UsageError(f"{REVIEWS_DIR}/{name}.json: {'; '.join(problems)}: a release cannot "
                             f"credit it. Review it again: `git rm {REVIEWS_DIR}/{name}.json`, "
                             "commit, and run `modelgit review`")
        if not os.path.isfile(os.path.join(repo.root, project.contributions, name,
                                           "adapter_model.safetensors")):
            raise UsageError(f"{name} was accepted but {project.contributions}/{name}/ is not in "
                             "the work tree: check out the branch the review was recorded on")
        out.append(review)
    return out


def next_tag(repo: GitRepo) -> str:
    tags = repo.git("tag", "--list", "v*").decode().split()
    numbers = [int(t[1:]) for t in tags if re.fullmatch(r"v\d+", t)]
    return f"v{max(numbers, default=1) + 1}"


def build_recipe(project: Project, names: list[str], method: str, parameters: dict,
                 strict: bool = True) -> dict:
    """A mergekit-schema recipe merging ``names``' adapters into the base (repo-relative paths).

    ``parameters``: the method's options (``lambda``, ``normalize``...), per-model defaults
    (``weight``, ``density``, ``gamma``, ``epsilon``) and per-contribution weights
    (``weight:<name>``). With ``strict`` (one method) they all go into the recipe, whose parser
    refuses one the method does not take; without it (several methods being compared with one
    set of settings) those the method does not take (``density`` for ``linear``...) are left out.
    """
    from ..merge.methods import METHODS

    known = METHODS[method] if method in METHODS and not strict else None
    per_model = {k: v for k, v in parameters.items() if k in ("density", "gamma", "epsilon")
                 and (known is None or k in known.model_params)}
    global_params = {k: v for k, v in parameters.items()
                     if k not in ("density", "gamma", "epsilon", "weight")
                     and not k.startswith("weight:") and (known is None or k in known.options)}
    models = [{"model": f"{project.model}+{project.contributions}/{n}",
               "parameters": {"weight": parameters.get(f"weight:{n}", parameters.get("weight", 1.0)),
                              **per_model}} for n in names]
    recipe = {"merge_method": method, "models": models}
    if not METHODS[method].base_is_input:  # linear would merge the base as one more model (mergekit's rule)
        recipe["base_model"] = project.model
    if global_params:
        recipe["parameters"] = global_params
    return recipe


def _merge(repo: GitRepo, recipe: dict, out: str, progress) -> None:
    from ..merge.engine import run_merge
    from ..merge.recipe import parse_recipe

    text = yaml.safe_dump(recipe, sort_keys=False)
    with contextlib.chdir(repo.root):  # the recipe's paths are relative to the repository
        run_merge(parse_recipe(recipe, text), out, progress=progress)


def _validation_suites(suites) -> list:
    chosen = [replace(s, data=s.validation) for s in suites if getattr(s, "validation", None)]
    if not chosen:
        raise UsageError("--search needs validation data: give suites a `validation:` file "
                         "(held-out data used only to choose merge settings)")
    return chosen


def _objective(base: list[dict], results: list[dict]) -> float:
    """Mean relative gain over the suites (the search maximises it)."""
    gains = [relative_gain(b["value"], r["value"], b["higher_is_better"]) for b, r in zip(base, results)]
    return sum(gains) / len(gains)


def search_recipe(repo: GitRepo, project: Project, names: list[str], method: str, parameters: dict,
                  suites, budget: int, work: str, progress=None) -> dict:
    """Coordinate search over ``lambda``, ``density`` and each contribution's weight on the
    suites' validation data: start at the given settings, try the neighbours on each axis in
    turn, move to the best, stop when nothing improves or ``budget`` merges were evaluated.
    Returns the search record (every trial, the best)."""
    from ..eval import evaluate_suites

    valid = _validation_suites(suites)
    base_dir = os.path.join(repo.root, project.model)
    base = evaluate_base(repo, base_dir, fingerprint_rev(repo, "HEAD", project.model), valid, progress)
    from ..merge.methods import METHODS

    axes = {"lambda": list(LAMBDAS)} if "lambda" in METHODS[method].options else {}
    if "density" in parameters and "density" in METHODS[method].model_params:
        axes["density"] = list(DENSITIES)
    if len(names) > 1:  # one model's weight only scales what lambda scales
        axes.update({f"weight:{n}": list(WEIGHTS) for n in names})
    point = {key: parameters.get(key, parameters.get("weight", 1.0) if key.startswith("weight:")
                                 else 1.0) for key in axes}
    for key, grid in axes.items():
        if point[key] not in grid:
            grid.append(point[key])
            grid.sort()
    trials: dict[tuple, float] = {}

    def score(candidate: dict) -> float:
        key = tuple(sorted(candidate.items()))
        if key not in trials:
            out = os.path.join(work, f"trial-{len(trials)}")
            _merge(repo, build_recipe(project, names, method, {**parameters, **candidate}, strict=False),
                   out, progress)
            trials[key] = _objective(base, evaluate_suites(out, None, valid, progress))
            shutil.rmtree(out, ignore_errors=True)
        return trials[key]

    best, best_score = dict(point), score(point)
    improved = True
    while improved and len(trials) < budget:
        improved = False
        for key, grid in axes.items():
            i = grid.index(best[key])
            for j in (i - 1, i + 1):
                if 0 <= j < len(grid) and len(trials) < budget:
                    candidate = {**best, key: grid[j]}
                    value = score(candidate)
                    if value > best_score + 1e-9:
                        best, best_score, improved = candidate, value, True
    return {"objective": "mean relative gain over the suites' validation data",
            "trials": [{"params": dict(k), "score": v} for k, v in trials.items()],
            "best": {"params": best, "score": best_score}}


def _install_weights(merged: str, model_dir: str) -> list[str]:
    """Replace the weights of ``model_dir`` by the merged ones; returns the files written."""
    for name in os.listdir(model_dir):
        if name.endswith(".safetensors") or name == "model.safetensors.index.json":
            os.remove(os.path.join(model_dir, name))
    written = []
    for name in sorted(os.listdir(merged)):
        if name.endswith(".safetensors") or name == "model.safetensors.index.json":
            shutil.move(os.path.join(merged, name), os.path.join(model_dir, name))
            written.append(name)
    # a merge of classifier adapters onto a bare encoder is the task model: its config names
    # the task architecture and the classes (see modelgit.merge.task_heads)
    config = os.path.join(merged, "config.json")
    if os.path.isfile(config) and not _same_file(config, os.path.join(model_dir, "config.json")):
        shutil.move(config, os.path.join(model_dir, "config.json"))
        written.append("config.json")
    return written


def _same_file(a: str, b: str) -> bool:
    if not os.path.isfile(b):
        return False
    with open(a, "rb") as first, open(b, "rb") as second:
        return first.read() == second.read()


def _contribution_entry(review: dict, record: dict) -> dict:
    """What the card and release record say of one contribution (``record``: its
    contribution.json; only the data card's sizes and hashes are taken from it)."""
    adapter = review.get("adapter") or {}
    card = record.get("data_card") or {}
    return {"name": review["contribution"], "author": review.get("author"),
            "message": record.get("message"),
            "data_card": {k: card[k] for k in ("records", "bytes", "sha256") if k in card},
            "anon_id": review.get("anon_id"), "commit": review.get("commit"),
            "adapter_id": adapter.get("content_id"), "rank": adapter.get("rank"),
            "alpha": adapter.get("alpha"), "target_modules": adapter.get("target_modules"),
            "review": {"decision": review["decision"], "target_suite": review.get("target_suite"),
                       "scores": {s: {"base": v["base"], "adapter": v["adapter"],
                                      **({"gain_interval": v["gain_interval"]}
                                         if v.get("gain_interval") else {})}
                                  for s, v in (review.get("scores") or {}).items()}}}


def _contribution_record(repo: GitRepo, project: Project, name: str) -> dict:
    path = os.path.join(repo.root, project.contributions, name, "contribution.json")
    try:
        record = load_json_file(path, max_bytes=project.limits.max_metadata_kb * 1024)
    except FormatError:
        return {}
    if not isinstance(record, dict) or record_problems(record, name):
        return {}  # checked at review; a record edited since is not quoted
    return record


def _kept(contributions: list[dict], results: list[dict]) -> None:
    """Record per contribution how much of its own gain on its target suite the release keeps."""
    by_suite = {r["suite"]: r for r in results}
    for c in contributions:
        suite = c["review"]["target_suite"]
        scores = c["review"]["scores"].get(suite)
        if suite in by_suite and scores:
            hib = by_suite[suite]["higher_is_better"]
            own = relative_gain(scores["base"], scores["adapter"], hib)
            now = relative_gain(scores["base"], by_suite[suite]["value"], hib)
            c["review"]["release_value"] = by_suite[suite]["value"]
            c["review"]["kept_gain"] = now / own if own else None


def _continue_pretraining(merged: str, data: str, steps: int, lr: float, work: str,
                          progress) -> tuple[str, dict]:
    """Train every weight of the merged model on ``data``; (its directory, what the card says)."""
    from ..adapters import TrainConfig, train

    out = os.path.join(work, "pretrained")
    done = train(TrainConfig(base=merged, data=data, output=out, full=True, steps=steps, lr=lr,
                             seed=0), progress=progress)
    m, card = done.metrics, done.data_card
    return out, {"steps": m["steps"], "lr": lr, "start_loss": m["start_loss"],
                 "final_loss": m["final_loss"], "loss_window": m["loss_window"],
                 "data_card": {k: card[k] for k in ("records", "bytes", "sha256")}}


def _result_entry(result: dict, base: dict, confidence: float = 0.95) -> dict:
    """What the record and card say of one suite: the release's and the base's values, the
    relative gain, and their bootstrap intervals over the suite's documents."""
    from ..eval import gain_interval, interval

    docs_r, docs_b = result.get("documents"), base.get("documents")
    entry = {"suite": result["suite"], "task": result["task"], "metric": result["metric"],
             "value": result["value"], "base_value": base["value"],
             "higher_is_better": result["higher_is_better"], "examples": result["examples"],
             "data_sha256": result["data"]["sha256"],
             "gain": relative_gain(base["value"], result["value"], result["higher_is_better"]),
             "confidence": confidence}
    entry["interval"] = interval(docs_r, result["metric"], confidence) if docs_r else None
    entry["gain_interval"] = gain_interval(docs_b, docs_r, result["metric"],
                                           result["higher_is_better"], confidence) \
        if docs_r and docs_b else None
    return entry


def _release_record(repo, project, tag, accepted, chosen: _Candidate | None, base_results,
                    results) -> dict:
    """The release record: ``releases/<tag>.json`` and the model card's input (``chosen``
    None: a release of specialists only, which merges nothing)."""
    contributions = [_contribution_entry(r, _contribution_record(repo, project, r["contribution"]))
                     for r in accepted]
    _kept(contributions, results)
    return {"release_version": 1, "name": project.name, "tag": tag,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": repo.rev_parse("HEAD"), "base_model": project.base_model,
            "task": project.task, "license": project.license,
            "language": list(project.language) if project.language else None,
            "method": chosen.method if chosen else None,
            "parameters": chosen.params if chosen else {},
            "recipe": yaml.safe_dump(chosen.recipe, sort_keys=False) if chosen else None,
            "search": chosen.search if chosen else None,
            "contributions": contributions,
            "results": [_result_entry(r, b) for r, b in zip(results, base_results)],
            "lineage": [{"tag": p.get("tag"), "date": p.get("date"), "commit": p.get("commit"),
                         "method": p.get("method"),
                         "contributions": [c["name"] for c in p.get("contributions", [])]}
                        for p in read_releases(repo)]}


def _check_finite(results: list[dict], base_results: list[dict]) -> None:
    """A release whose scores are not finite numbers is refused: the card would credit NaN."""
    bad = [f"{r['suite']} ({who} {r['metric']} {r['value']!r})"
           for who, rows in (("release", results), ("base", base_results)) for r in rows
           if isinstance(r["value"], bool) or not isinstance(r["value"], (int, float))
           or not math.isfinite(r["value"])]
    if bad:
        raise UsageError(f"the merged model or the base scores a non-finite number on "
                         f"{', '.join(bad)}: nothing was released; try another --method or a "
                         "smaller --scale, or check the suites' data")


def _methods(method) -> list[str]:
    """The methods to compare: one name, a comma-separated list, or a list."""
    from ..merge.methods import METHODS

    names = [m.strip() for m in (method.split(",") if isinstance(method, str) else method)
             if m and m.strip()]
    if not names:
        raise UsageError("no merge method given: use e.g. --method ties or --method ties,linear")
    for name in names:
        if name not in METHODS:
            import difflib

            close = difflib.get_close_matches(name, list(METHODS), n=1)
            raise UsageError(f"unknown merge method {name!r}"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f": use one of {', '.join(sorted(METHODS))}")
    if len(set(names)) != len(names):
        raise UsageError(f"--method names a method twice: {', '.join(names)}")
    return names


def _check_taken(parameters: dict, methods: list[str]) -> None:
    """Several methods share one set of settings, each taking those it knows; a setting that none
    of them takes is a mistake (a misspelling, or a method missing from the list)."""
    from ..merge.methods import METHODS

    for key in parameters:
        if key == "weight" or key.startswith("weight:"):
            continue
        takers = [m for m in methods if key in METHODS[m].model_params or key in METHODS[m].options]
        if not takers:
            raise UsageError(f"no method of {', '.join(methods)} takes the setting {key!r}: "
                             "remove it or add a method that uses it")


@dataclass(frozen=True)
class _Plan:
    """What every candidate merge of one release is built and judged with."""

    repo: GitRepo
    project: Project
    names: list
    parameters: dict
    suites: list
    base_results: list
    selection: tuple  # (suites, their base results) the candidates are compared on
    search: bool
    search_budget: int
    work: str
    progress: object
    strict: bool = True  # one method: a setting it does not take is an error (see build_recipe)


def _selection(repo, project, suites, base_results, progress) -> tuple:
    """The suites' validation data when every suite has some (choosing on the held-out data
    would make its figures optimistic), else the held-out suites themselves."""
    if all(getattr(s, "validation", None) for s in suites):
        valid = _validation_suites(suites)
        base_dir = os.path.join(repo.root, project.model)
        fp = fingerprint_rev(repo, "HEAD", project.model)
        return valid, evaluate_base(repo, base_dir, fp, valid, progress)
    return None, base_results


def _candidate(plan: _Plan, method: str, index: int, count: int) -> _Candidate:
    from ..eval import evaluate_suites
    from ..progress import note

    params = {**DEFAULT_PARAMETERS.get(method, {}), **plan.parameters}
    search_record = None
    if plan.search:
        note(f"release: searching {method}'s settings ({index} of {count})", plan.progress)
        search_record = search_recipe(plan.repo, plan.project, plan.names, method, params,
                                      plan.suites, plan.search_budget, plan.work, plan.progress)
        params.update(search_record["best"]["params"])
    recipe = build_recipe(plan.project, plan.names, method, params, strict=plan.strict)
    merged = os.path.join(plan.work, f"merged-{method}")
    note(f"release: merging with {method} ({index} of {count})", plan.progress)
    _merge(plan.repo, recipe, merged, plan.progress)
    # linear / task arithmetic of LoRAs: the exact bytes a derived object reproduces (a release
    # then stores its adapters and recipes, not deltas: see .derived_release)
    derive_merge(recipe, plan.repo.root, os.path.join(plan.repo.root, plan.project.model), merged)
    results = evaluate_suites(merged, None, plan.suites, plan.progress)
    valid, valid_base = plan.selection
    judged = evaluate_suites(merged, None, valid, plan.progress) if valid else results
    finite = all(isinstance(r["value"], (int, float)) and math.isfinite(r["value"]) for r in judged)
    objective = _objective(valid_base, judged) if finite else float("-inf")
    return _Candidate(method, _taken(method, params), recipe, search_record, merged, results,
                      objective)


def _taken(method: str, params: dict) -> dict:
    """The settings of ``params`` that ``method`` takes (weights always)."""
    from ..merge.methods import METHODS

    known = METHODS[method]
    return {k: v for k, v in params.items() if k == "weight" or k.startswith("weight:")
            or k in known.model_params or k in known.options}


def _comparison(candidates: list[_Candidate], chosen: _Candidate, base_results: list,
                on_validation: bool) -> dict:
    return {"basis": "mean relative gain on the suites' validation data" if on_validation else
            "mean relative gain on the held-out suites (no validation data: the chosen "
            "method's figures are then optimistic)",
            "chosen": chosen.method,
            "methods": [{"method": c.method, "parameters": c.params, "objective": c.objective,
                         "results": [_result_entry(r, b) for r, b in zip(c.results, base_results)]}
                        for c in candidates]}


def release(repo: GitRepo, suites, method="ties", parameters: dict | None = None,
            tag: str | None = None, search: bool = False, search_budget: int = 8,
            message: str | None = None, push: str | None = None,
            pretrain: str | None = None, pretrain_steps: int = 50, pretrain_lr: float = 1e-5,
            progress: bool | None = False, dry_run: bool = False,
            router=None) -> ReleaseResult:
    """Merge the accepted contributions into the base, evaluate on ``suites``, commit the new
    base with its model card, release record and adapter library, and tag it (see the module
    docstring). With no accepted contribution but specialists not yet in a library, the release
    keeps the weights and records the new library.

    Args:
        method: a merge method, or several (``"ties,linear"`` or a list): each merges the same
            contributions and is evaluated; the one with the best mean relative gain on the
            suites' validation data (on the held-out suites when a suite has none) is released,
            and the record's ``comparison`` holds them all.
        parameters: the recipe's settings (``density``, ``lambda``...); each method takes those
            it knows.
        pretrain: a data path: the merged model is trained further, every weight, for
            ``pretrain_steps`` steps at ``pretrain_lr`` (continued pretraining) before it is
            evaluated.
        dry_run: merge and evaluate in a scratch directory and return the record, changing
            nothing: no weights, card, record, router, commit, tag or push.
        router: called with a :class:`~.library.RouterJob` to build the release's router over
            its library (e.g. :class:`modelgit.route.release_router.ReleaseRouter`); returns
            what the record says of it. None: no router.
    Raises:
        UsageError: nothing to release, a dirty work tree, an existing tag, held-out files
            inside the repository, a search without validation data, an unknown method, a
            router asked for a library without adapters.
    """
    from .card import render_model_card

    project = read_project(repo)
    methods = _methods(method)
    if not dry_run:
        require_clean(repo, [], "modelgit release")
    check_heldout_private(repo, suites)
    accepted = accepted_contributions(repo, project)
    if not accepted and not pending_specialists(repo, read_releases(repo)):
        raise UsageError("nothing to release: no accepted contribution and no specialist since "
                         "the last release (run `modelgit review` first)")
    tag = tag or next_tag(repo)
    if repo.rev_parse(f"refs/tags/{tag}"):
        raise UsageError(f"tag {tag} exists: choose another --tag")
    names = [r["contribution"] for r in accepted]
    _check_taken(parameters or {}, methods)  # before any merge: a misspelled setting costs nothing
    model_dir = os.path.join(repo.root, project.model)
    head = repo.rev_parse("HEAD")
    with scratch_dir(repo, "release-") as work:
        base_results = evaluate_base(repo, model_dir, fingerprint_rev(repo, "HEAD", project.model),
                                     suites, progress)
        if accepted:
            merged, record = _merged_release(
                _Plan(repo, project, names, dict(parameters or {}), suites, base_results,
                      _selection(repo, project, suites, base_results, progress)
                      if len(methods) > 1 else (None, base_results),
                      search, search_budget, work, progress, strict=len(methods) == 1),
                methods, tag, accepted, pretrain, pretrain_steps, pretrain_lr)
        else:  # specialists only: the weights stay
            merged, record = model_dir, _release_record(repo, project, tag, [], None, base_results,
                                                        base_results)
            record["pretraining"] = None
        record["library"] = library_record(repo, project, head, tag, weights_stay=not accepted)
        router_dir = _build_router(router, RouterJob(repo, tag, record["library"], suites, merged,
                                                     os.path.join(work, "router"), progress))
        if router_dir:
            record["library"]["router"] = {**router_dir[1], "path": f"{ROUTERS_DIR}/{tag}"}
        card = render_model_card(record)  # before the work tree changes: it may refuse the record
        if dry_run:
            return ReleaseResult(tag, None, record, None, dry_run=True)
        if accepted:
            _install_weights(merged, model_dir)
            record_derived(repo.store(), os.path.join(merged, PLAN_FILE), model_dir)
        if router_dir:
            _install_router(repo, tag, router_dir[0])
    title = message or (f"Release {tag}: merge {len(names)} contribution(s) with {record['method']}"
                        if accepted else f"Release {tag}: adapter library "
                        f"({len(record['library']['adapters'])} adapter(s)); weights unchanged")
    commit = _commit_release(repo, project, tag, record, card, names, title, push)
    return ReleaseResult(tag, commit, record, push)


def _merged_release(plan: _Plan, methods: list[str], tag: str, accepted: list[dict],
                    pretrain, pretrain_steps, pretrain_lr) -> tuple[str, dict]:
    """(the released weights' directory, the record): every method's merge, the best kept,
    continued pretraining when asked, evaluated."""
    from ..eval import evaluate_suites

    candidates = [_candidate(plan, m, i, len(methods)) for i, m in enumerate(methods, 1)]
    chosen = max(candidates, key=lambda c: c.objective)  # the first of equals: the order given
    for other in candidates:  # each merge is a whole model: keep only the chosen one's
        if other is not chosen:
            shutil.rmtree(other.merged, ignore_errors=True)
    merged, results, pretraining = chosen.merged, chosen.results, None
    if pretrain:
        merged, pretraining = _continue_pretraining(merged, pretrain, pretrain_steps,
                                                    pretrain_lr, plan.work, plan.progress)
        results = evaluate_suites(merged, None, plan.suites, plan.progress)
    _check_finite(results, plan.base_results)
    record = _release_record(plan.repo, plan.project, tag, accepted, chosen, plan.base_results,
                             results)
    record["pretraining"] = pretraining
    if len(candidates) > 1:
        record["comparison"] = _comparison(candidates, chosen, plan.base_results,
                                           plan.selection[0] is not None)
    return merged, record


def _commit_release(repo: GitRepo, project: Project, tag: str, record: dict, card: str,
                    names: list[str], title: str, push: str | None) -> str:
    """Write the card and the record beside the installed weights, commit, tag, push."""
    model_dir = os.path.join(repo.root, project.model)
    write_atomic(os.path.join(model_dir, "README.md"), card)
    os.makedirs(os.path.join(repo.root, RELEASES_DIR), exist_ok=True)
    write_atomic(os.path.join(repo.root, RELEASES_DIR, f"{tag}.json"), dumps_json(record))
    paths = [project.model, RELEASES_DIR]
    if os.path.isdir(os.path.join(repo.root, ROUTERS_DIR, tag)):
        paths.append(f"{ROUTERS_DIR}/{tag}")
    repo.git("add", "-A", "--", *paths)
    repo.git("commit", "-q", "-m", f"{title}\n\nContributions: {', '.join(names) or 'none merged'}\n"
                                   f"Modelgit-Release: {tag}\n")
    repo.git("tag", "-a", tag, "-m", title)
    if push:
        branch = repo.git("symbolic-ref", "--short", "HEAD").decode().strip()
        repo.git("push", push, f"refs/heads/{branch}", f"refs/tags/{tag}")
    return repo.rev_parse("HEAD")
