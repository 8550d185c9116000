"""``modelgit release``: merge the accepted contributions into the base, evaluate, card, tag.

The accepted contributions since the last release (``reviews/*.json`` with ``decision: accept``,
not yet named by a ``releases/*.json``) are merged into the base with a merge recipe (TIES by
default) through the merge engine, each as ``BASE+ADAPTER``. Optionally a gradient-free search
picks the recipe's ``lambda`` (scale of the merged update) and ``density`` on the suites'
validation data. The result is evaluated on every suite, written over the base's weights (same
file names, so unchanged tensors keep their object ids and only changed ones travel), and
committed with the model card (``<model>/README.md``) and the release record
(``releases/<tag>.json``); the commit is tagged.
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
    tag: str
    commit: str
    record: dict
    pushed_to: str | None = None


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


def build_recipe(project: Project, names: list[str], method: str, parameters: dict) -> dict:
    """A mergekit-schema recipe merging ``names``' adapters into the base (repo-relative paths).

    ``parameters``: the method's options (``lambda``, ``normalize``...), per-model defaults
    (``weight``, ``density``, ``gamma``, ``epsilon``) and per-contribution weights
    (``weight:<name>``).
    """
    from ..merge.methods import METHODS

    per_model = {k: v for k, v in parameters.items() if k in ("density", "gamma", "epsilon")}
    global_params = {k: v for k, v in parameters.items()
                     if k not in per_model and k != "weight" and not k.startswith("weight:")}
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
    if "density" in parameters:
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
            _merge(repo, build_recipe(project, names, method, {**parameters, **candidate}), out, progress)
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
    return written


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
                       "scores": {s: {"base": v["base"], "adapter": v["adapter"]}
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
    return out, {"steps": m["steps"], "lr": lr, "first_loss": m["first_loss"],
                 "last_loss": m["last_loss"],
                 "data_card": {k: card[k] for k in ("records", "bytes", "sha256")}}


def _release_record(repo, project, tag, accepted, method, params, recipe, search_record,
                    base_results, results) -> dict:
    """The release record: ``releases/<tag>.json`` and the model card's input."""
    contributions = [_contribution_entry(r, _contribution_record(repo, project, r["contribution"]))
                     for r in accepted]
    _kept(contributions, results)
    return {"release_version": 1, "name": project.name, "tag": tag,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": repo.rev_parse("HEAD"), "base_model": project.base_model,
            "task": project.task, "license": project.license,
            "language": list(project.language) if project.language else None,
            "method": method, "parameters": params,
            "recipe": yaml.safe_dump(recipe, sort_keys=False), "search": search_record,
            "contributions": contributions,
            "results": [{"suite": r["suite"], "task": r["task"], "metric": r["metric"],
                         "value": r["value"], "base_value": b["value"],
                         "higher_is_better": r["higher_is_better"], "examples": r["examples"],
                         "data_sha256": r["data"]["sha256"]} for r, b in zip(results, base_results)],
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


def release(repo: GitRepo, suites, method: str = "ties", parameters: dict | None = None,
            tag: str | None = None, search: bool = False, search_budget: int = 8,
            message: str | None = None, push: str | None = None,
            pretrain: str | None = None, pretrain_steps: int = 50, pretrain_lr: float = 1e-5,
            progress: bool | None = False) -> ReleaseResult:
    """Merge the accepted contributions into the base, evaluate on ``suites``, commit the new
    base with its model card and release record, and tag it (see the module docstring).

    With ``pretrain`` (a data path) the merged model is trained further, every weight, for
    ``pretrain_steps`` steps at ``pretrain_lr`` (continued pretraining) before it is evaluated.

    Raises:
        UsageError: nothing accepted to release, a dirty work tree, an existing tag, held-out
            files inside the repository, a search without validation data.
    """
    from ..eval import evaluate_suites
    from ..merge.methods import METHODS
    from .card import render_model_card

    project = read_project(repo)
    if method not in METHODS:
        raise UsageError(f"unknown merge method {method!r}: use one of {', '.join(sorted(METHODS))}")
    require_clean(repo, [], "modelgit release")
    check_heldout_private(repo, suites)
    accepted = accepted_contributions(repo, project)
    if not accepted:
        raise UsageError("nothing to release: no accepted contribution since the last release "
                         "(run `modelgit review` first)")
    tag = tag or next_tag(repo)
    if repo.rev_parse(f"refs/tags/{tag}"):
        raise UsageError(f"tag {tag} exists: choose another --tag")
    names = [r["contribution"] for r in accepted]
    params = {**DEFAULT_PARAMETERS.get(method, {}), **(parameters or {})}
    model_dir = os.path.join(repo.root, project.model)
    with scratch_dir(repo, "release-") as work:
        search_record = None
        if search:
            search_record = search_recipe(repo, project, names, method, params, suites,
                                          search_budget, work, progress)
            params.update(search_record["best"]["params"])
        recipe = build_recipe(project, names, method, params)
        merged = os.path.join(work, "merged")
        _merge(repo, recipe, merged, progress)
        pretraining = None
        if pretrain:
            merged, pretraining = _continue_pretraining(merged, pretrain, pretrain_steps,
                                                        pretrain_lr, work, progress)
        base_results = evaluate_base(repo, model_dir, fingerprint_rev(repo, "HEAD", project.model),
                                     suites, progress)
        results = evaluate_suites(merged, None, suites, progress)
        _check_finite(results, base_results)
        record = _release_record(repo, project, tag, accepted, method, params, recipe,
                                 search_record, base_results, results)
        record["pretraining"] = pretraining
        card = render_model_card(record)  # before the work tree changes: it may refuse the record
        _install_weights(merged, model_dir)
    write_atomic(os.path.join(model_dir, "README.md"), card)
    os.makedirs(os.path.join(repo.root, RELEASES_DIR), exist_ok=True)
    write_atomic(os.path.join(repo.root, RELEASES_DIR, f"{tag}.json"), dumps_json(record))
    repo.git("add", "-A", "--", project.model, RELEASES_DIR)
    title = message or f"Release {tag}: merge {len(names)} contribution(s) with {method}"
    repo.git("commit", "-q", "-m", f"{title}\n\nContributions: {', '.join(names)}\n"
                                   f"Modelgit-Release: {tag}\n")
    repo.git("tag", "-a", tag, "-m", title)
    commit = repo.rev_parse("HEAD")
    if push:
        branch = repo.git("symbolic-ref", "--short", "HEAD").decode().strip()
        repo.git("push", push, f"refs/heads/{branch}", f"refs/tags/{tag}")
    return ReleaseResult(tag, commit, record, push)
