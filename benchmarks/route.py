#!/usr/bin/env python3
"""Routing benchmark (issue 13): routers over specialist LoRA adapters against the oracle adapter
and the merged release, on real text of this machine, with SmolLM2-135M; and routed
classification adapters on MiniLM.

One run:

1. **Data.** Six text domains of this machine (``modelgit.demo_data``): the demo's ``python``,
   ``debian``, ``manpages`` and ``c``, ``shell`` are *covered* (one adapter each); ``licenses``
   is *uncovered* (no adapter: the router should leave it to the base). Disjoint train / held-out
   / validation splits per domain. Two labelled tasks (``modelgit.demo_tasks``: man-page section,
   source language) for the encoder part.
2. **Adapters** (each step a child process, measured): SmolLM2-135M converted once
   (``modelgit.smollm2``); one LoRA per covered domain with ``modelgit train`` (the demo's
   settings); ``modelgit eval`` of the base and of every adapter on every domain's held-out split
   (perplexity); the oracle (the best adapter per domain); the merged release (``modelgit merge``,
   TIES density 0.5, weight 1 per adapter: what ``modelgit release`` builds); one classification
   LoRA per task on MiniLM (``modelgit train --task classification``), each evaluated alone.
3. **Routers** (``modelgit.route``): every kind (arrow, examples with the base model's hidden
   states and with MiniLM as embedder, reviews), hard and soft. Per domain: perplexity, share of
   the oracle's gain kept, routing accuracy against the oracle, the router's CPU time per input
   against the base model's forward pass; the uncovered domain's loss against the base. On the
   encoder: routed accuracy against each adapter alone.

Every step of parts 1-2 runs as a child process; the benchmark times it (wall), reads its CPU
time and ``ru_maxrss`` with ``os.wait4`` and samples ``/proc`` every 50 ms for the peak RSS of its
process tree (the measuring code of ``benchmarks/merge.py``). Results are cached in the work
directory (``--workdir DIR``: reused by the next run with the same settings, which skips what is
done; without it a temporary directory is used and deleted unless ``--keep``).

Usage::

    python3 benchmarks/route.py                        # SmolLM2-135M (~40 min on 2 busy cores)
    python3 benchmarks/route.py --quick                # tiny Llama, few examples (~3 min)
    python3 benchmarks/route.py --workdir /tmp/route-bench --json figures.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the steps' `python -m modelgit` runs this checkout's code (the one route_code_key hashes), not
# whatever an installed modelgit points to
os.environ["PYTHONPATH"] = os.pathsep.join([os.path.join(REPO, "src"),
                                            *filter(None, [os.environ.get("PYTHONPATH")])])

import merge as measuring  # noqa: E402  (benchmarks/merge.py: run_measured, TreeSampler)

COVERED = ["python", "debian", "manpages", "shell"]  # --covered; any of demo_data.ALL_DOMAINS
UNCOVERED = "licenses"  # --uncovered
# Classification tasks and their labels: the same number of classes per task, written as class
# indices, because one routed classifier has one head size (see "Requests from benchmark" 1).
TASKS = {"mansection": ("1", "3", "5", "8"), "language": ("c", "perl", "python", "shell")}
TARGET_KEEP = 0.95  # best router keeps >= 95% of the oracle adapter's gain on every domain
TARGET_UNCOVERED_LOSS = 0.01  # <= 1% worse than the base on a domain no adapter covers
TARGET_OVERHEAD = 0.10  # router CPU per input <= 10% of the base forward pass


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a run builds; the cache key of everything in the work directory."""

    base: str  # "smollm2" or "tiny"
    train: int
    heldout: int
    validation: int
    max_chars: int
    steps: int
    batch_size: int
    max_length: int
    lr: float
    rank: int
    task_train: int  # classification examples per label
    task_test: int
    task_steps: int
    task_lr: float
    task_max_length: int
    seed: int = 0
    # example texts per adapter from its own training split (the small file a contributor adds
    # with the adapter), for the routers that learn from more than the suites' validation texts
    train_examples: int = 64


# FULL: modelgit demo's FULL settings (demo.py)
FULL = Settings(base="smollm2", train=200, heldout=24, validation=12, max_chars=700, steps=40,
                batch_size=4, max_length=128, lr=5e-4, rank=8, task_train=60, task_test=40,
                task_steps=60, task_lr=1e-3, task_max_length=128)
QUICK = Settings(base="tiny", train=160, heldout=16, validation=8, max_chars=300, steps=60,
                 batch_size=8, max_length=64, lr=3e-3, rank=8, task_train=16, task_test=10,
                 task_steps=20, task_lr=2e-3, task_max_length=64, train_examples=32)


# what each kind of step depends on (its cache key)
DATA_FIELDS = ("train", "heldout", "validation", "max_chars", "seed", "task_train", "task_test")
TRAIN_FIELDS = ("base", "train", "max_chars", "seed", "steps", "batch_size", "max_length", "lr",
                "rank")
EVAL_FIELDS = (*TRAIN_FIELDS, "heldout", "validation")
TASK_FIELDS = ("task_train", "task_test", "max_chars", "seed", "task_steps", "task_lr",
               "task_max_length", "rank")


def domains_key() -> str:
    """Which domains are covered and which is not: part of the key of every step that reads
    more than one domain."""
    return ",".join(COVERED) + "|" + UNCOVERED


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ============================================================================ the work directory
class Work:
    """The work directory: paths, and the cache of finished steps (``steps/<name>.json``)."""

    def __init__(self, root: str, settings: Settings):
        self.root = root
        self.settings = settings
        self.steps: dict[str, dict] = {}  # name -> measured run (this run or cached)
        for sub in ("steps", "logs", "data", "adapters", "evals"):
            os.makedirs(self.path(sub), exist_ok=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def key(self, *fields: str, extra: str = "") -> str:
        """The cache key of a step that depends on these settings (and on ``extra``): a
        step is done again only when something it depends on changed."""
        values = {f: getattr(self.settings, f) for f in sorted(set(fields))}
        return hashlib.sha256(json.dumps([values, extra], sort_keys=True).encode()).hexdigest()[:16]

    def cached(self, name: str, key: str) -> dict | None:
        try:
            with open(self.path("steps", f"{name}.json"), encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return None
        return record if record.get("signature") == key else None

    def record(self, name: str, record: dict, key: str) -> dict:
        record = {**record, "signature": key}
        path = self.path("steps", f"{name}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1, sort_keys=True, default=str)
        os.replace(path + ".tmp", path)  # a step is done only once its record is whole
        return record

    def run(self, name: str, argv: list[str], key: str, output: str | None = None) -> dict:
        """Run one measured command, unless its record under ``key`` (:meth:`key`) says it is
        done (then the record)."""
        done = self.cached(name, key)
        if done is not None and (output is None or os.path.exists(output)):
            self.steps[name] = {**done, "cached": True}
            return self.steps[name]
        if output and os.path.exists(output):
            shutil.rmtree(output) if os.path.isdir(output) else os.remove(output)
        shown = " ".join(os.path.basename(a) if os.path.isabs(a) else a for a in argv[2:8])
        say(f"{name}: {shown[:100]} ...")
        log = self.path("logs", f"{name}.log")
        if os.path.exists(log):
            os.remove(log)
        result = measuring.run_measured(argv, log)
        with open(log, encoding="utf-8", errors="replace") as handle:
            result["stdout_tail"] = handle.read()[-200000:]
        say(f"{name}: {result['wall_s']:.0f} s wall, {result['user_s'] + result['sys_s']:.0f} CPU-s, "
            f"peak {result['peak_rss_mb']:.0f} MB")
        self.steps[name] = self.record(name, result, key)
        return self.steps[name]


def modelgit(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelgit", *args]


def json_of(run: dict) -> object:
    """The JSON document a ``--json`` command printed (the first that parses, from a line start;
    progress lines on stderr may come before and after it)."""
    text, decoder = run["stdout_tail"], json.JSONDecoder()
    for start in [i for i, ch in enumerate(text) if ch in "[{" and (i == 0 or text[i - 1] == "\n")]:
        try:
            value, _end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, (dict, list)) and value:
            return value
    raise RuntimeError(f"no JSON output in the log of {' '.join(run['argv'][:6])}")


# ============================================================================ part 1: data
def prepare_data(work: Work) -> dict:
    """Domain splits, suites file, task splits: written once per settings (cheap, in-process)."""
    from modelgit.demo_data import write_domain_splits
    from modelgit.demo_tasks import write_task_splits

    s = work.settings
    key = work.key(*DATA_FIELDS, extra=domains_key() + json.dumps(TASKS, sort_keys=True))
    done = work.cached("data", key)
    if done is not None:
        work.steps["data"] = {**done, "cached": True}
        return done["paths"]
    say("data: reading the domains and tasks of this machine")
    t0, c0 = time.perf_counter(), time.process_time()
    splits = write_domain_splits(work.path("data"), s.train, s.heldout, s.validation, s.max_chars,
                                 s.seed, domains=(*COVERED, UNCOVERED))
    tasks = {task: write_task_splits(work.path("data", "tasks"), task, s.task_train, s.task_test,
                                     s.max_chars, s.seed, labels) for task, labels in TASKS.items()}
    for task, files in tasks.items():
        index_labels(files, TASKS[task])
    write_task_suites(work.path("data", "task-suites.yaml"), tasks, s)
    suites = work.path("data", "suites.yaml")
    write_suites(suites, splits, s)
    paths = {"domains": splits, "tasks": tasks, "suites": suites,
             "task_suites": work.path("data", "task-suites.yaml")}
    record = {"paths": paths, "wall_s": time.perf_counter() - t0,
              "user_s": time.process_time() - c0, "sys_s": 0.0, "peak_rss_mb": None}
    work.steps["data"] = work.record("data", record, key)
    return paths


def index_labels(files: dict[str, str], labels: tuple[str, ...]) -> None:
    """Rewrite a task's splits with class indices (sorted label order) instead of names."""
    index = {label: i for i, label in enumerate(sorted(labels))}
    for path in files.values():
        with open(path, encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle]
        with open(path, "w", encoding="utf-8") as handle:
            for r in records:
                handle.write(json.dumps({"text": r["text"], "label": index[r["label"]],
                                         "name": r["label"]}, ensure_ascii=False) + "\n")


def write_task_suites(path: str, tasks: dict, s: Settings) -> None:
    import yaml

    suites = [{"name": t, "data": f["test"], "task": "classification", "metric": "accuracy",
               "max_length": s.task_max_length, "batch_size": 16} for t, f in tasks.items()]
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump({"suites": suites}, handle, sort_keys=False)


def write_suites(path: str, splits: dict, s: Settings) -> None:
    """The demo's suites file (one perplexity suite per domain), with this run's settings."""
    from modelgit.demo import write_suites as demo_suites

    demo_suites(path, splits, s)


# ============================================================================ part 2: adapters
def prepare_base(work: Work, paths: dict, model_cache: str) -> str:
    """The base model directory: SmolLM2-135M (converted once into ``model_cache``) or, for
    --quick, a tiny Llama whose vocabulary covers the texts."""
    if work.settings.base == "smollm2":
        code = ("from modelgit.smollm2 import prepare_smollm2; "
                f"print(prepare_smollm2(cache_dir={model_cache!r}, progress=False))")
        run = work.run("base", [sys.executable, "-c", code], work.key("base", extra=model_cache))
        return run["stdout_tail"].strip().splitlines()[-1]
    out = work.path("tiny-base")
    files = [f[split] for f in paths["domains"].values() for split in f]
    code = ("import json, sys; from modelgit.adapters.tiny import tiny_causal_lm; "
            "texts = [json.loads(l)['text'] for p in sys.argv[2:] for l in open(p)]; "
            "print(tiny_causal_lm(sys.argv[1], texts, seed=0, hidden=64, layers=2))")
    work.run("base", [sys.executable, "-c", code, out, *files], work.key(*DATA_FIELDS, "base", extra=domains_key()),
             output=out)
    return out


def train_adapters(work: Work, base: str, paths: dict) -> dict[str, str]:
    s = work.settings
    adapters = {}
    for domain in COVERED:
        out = work.path("adapters", domain)
        work.run(f"train-{domain}", modelgit(
            "train", base, "--data", paths["domains"][domain]["train"], "-o", out,
            "--task", "causal_lm", "--rank", str(s.rank), "--alpha", str(2.0 * s.rank),
            "--steps", str(s.steps), "--batch-size", str(s.batch_size),
            "--max-length", str(s.max_length), "--lr", str(s.lr), "--seed", str(s.seed),
            "--json"), work.key(*TRAIN_FIELDS), output=out)
        adapters[domain] = out
    return adapters


def merge_release(work: Work, base: str, adapters: dict[str, str]) -> str:
    """TIES of every adapter into the base, as ``modelgit release`` builds it (build_recipe)."""
    import yaml

    recipe = {"merge_method": "ties", "base_model": base,
              "models": [{"model": f"{base}+{path}", "parameters": {"weight": 1.0, "density": 0.5}}
                         for path in adapters.values()]}
    recipe_path = work.path("adapters", "release-recipe.yaml")
    with open(recipe_path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(recipe, handle, sort_keys=False)
    out = work.path("merged")
    work.run("merge", modelgit("merge", recipe_path, "-o", out, "--json"),
             work.key(*TRAIN_FIELDS, extra=domains_key()), output=out)
    return out


def evaluate_lms(work: Work, base: str, adapters: dict[str, str], merged: str,
                 suites: str) -> dict[str, dict[str, dict]]:
    """``{model: {domain: {"perplexity", "loss", "tokens"}}}`` for base, adapters, release."""
    models = {"base": (base, None), **{f"+{d}": (base, a) for d, a in adapters.items()},
              "release": (merged, None)}
    scores = {}
    for label, (model_dir, adapter) in models.items():
        extra = ["--adapter", adapter] if adapter else []
        run = work.run(f"eval-{label.lstrip('+')}{'-adapter' if adapter else ''}",
                       modelgit("eval", model_dir, *extra, "--suites", suites, "--json"),
                       work.key(*EVAL_FIELDS, extra=domains_key()))
        scores[label] = {r["suite"]: suite_figures(r) for r in json_of(run)}
    return scores


def suite_figures(result: dict) -> dict:
    metrics = result["metrics"]
    return {"perplexity": metrics["perplexity"], "loss": metrics["loss"],
            "tokens": metrics["tokens"]}


def train_classifiers(work: Work, minilm: str, paths: dict) -> dict[str, dict]:
    """One classification LoRA per task on MiniLM, each evaluated alone on its test split."""
    s = work.settings
    out = {}
    for task in TASKS:
        adapter = work.path("adapters", f"cls-{task}")
        split = paths["tasks"][task]
        work.run(f"train-cls-{task}", modelgit(
            "train", minilm, "--data", split["train"], "-o", adapter, "--task", "classification",
            "--rank", str(s.rank), "--alpha", str(2.0 * s.rank), "--steps", str(s.task_steps),
            "--batch-size", "8", "--max-length", str(s.task_max_length), "--lr", str(s.task_lr),
            "--seed", str(s.seed), "--json"), work.key(*TASK_FIELDS), output=adapter)
        run = work.run(f"eval-cls-{task}", modelgit(
            "eval", minilm, "--adapter", adapter, "--data", split["test"], "--task",
            "classification", "--metric", "accuracy", "--max-length", str(s.task_max_length),
            "--json"), work.key(*TASK_FIELDS))
        [result] = json_of(run)
        out[task] = {"adapter": adapter, "accuracy": result["value"], "test": split["test"]}
    return out


def oracle_of(scores: dict, adapters: dict) -> dict[str, str]:
    """The best adapter (lowest perplexity) for each domain."""
    return {d: min((f"+{a}" for a in adapters), key=lambda m: scores[m][d]["perplexity"])
            for d in scores["base"]}


def kept_gain(base: float, oracle: float, value: float) -> float | None:
    """Share of the oracle's perplexity gain over the base that ``value`` keeps."""
    return (base - value) / (base - oracle) if base > oracle else None


# ============================================================================ part 3: routers
def route_code_key() -> str:
    """A hash of the routing code: routers are built and evaluated again when it changes."""
    digest = hashlib.sha256()
    folder = os.path.join(REPO, "src", "modelgit", "route")
    for path in sorted([os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".py")]
                       + [os.path.join(REPO, "src", "modelgit", "cli", "route_commands.py")]):
        with open(path, "rb") as handle:
            digest.update(path.encode() + b"\0" + handle.read())
    return "-route-" + digest.hexdigest()[:12]


def contributor_examples(work: Work, paths: dict) -> dict[str, str]:
    """``{domain: file}``: the first ``train_examples`` texts of each covered domain's training
    split: what a contributor would add beside the adapter (its own training data; disjoint
    from the held-out texts the routers are measured on)."""
    out = {}
    for domain in COVERED:
        path = work.path("data", domain, f"examples-{work.settings.train_examples}.jsonl")
        with open(paths["domains"][domain]["train"], encoding="utf-8") as source:
            lines = source.readlines()[:work.settings.train_examples]
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        out[domain] = path
    return out


def _lines(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(1 for _ in handle)


def router_specs(paths: dict, scores_file: str, contributed: dict[str, str]) -> dict[str, list[str]]:
    """``{label: route build arguments}``: each kind, each embedder. Examples are the covered
    domains' validation texts (the maintainer's suites' validation data), except for the
    ``linear`` routers: a probe learns from ``contributed`` (a few dozen training texts per
    adapter); the uncovered domain is never shown to a router."""
    examples = [a for d in COVERED for a in ("--examples", f"{d}={paths['domains'][d]['validation']}")]
    more = [a for d in COVERED for a in ("--examples", f"{d}={contributed[d]}")]
    count = ["--max-examples", str(max(50, *map(_lines, contributed.values())))]
    suites = [a for d in COVERED for a in ("--suite", d)]
    return {
        "arrow": ["--kind", "arrow"],  # data-free: no threshold (nothing to calibrate it on)
        "arrow-calibrated": ["--kind", "arrow", *examples],  # unlabelled: offset + threshold
        "examples-base": ["--kind", "examples", "--embedder", "base:1", *examples],
        "examples-base-knn": ["--kind", "examples", "--embedder", "base:1", "--method", "knn",
                              *examples],
        "examples-minilm": ["--kind", "examples", "--embedder", "minilm", *examples],
        "examples-base-linear": ["--kind", "examples", "--embedder", "base:1", "--method",
                                 "linear", *more, *count],
        "examples-base2-linear": ["--kind", "examples", "--embedder", "base:2", "--method",
                                  "linear", *more, *count],
        "reviews": ["--kind", "reviews", "--suites", paths["suites"], *suites,
                    "--scores", scores_file],
    }


def review_scores(work: Work, scores: dict) -> str:
    """What a review records, from the ``modelgit eval`` results: ``{adapter: {suite: {"base",
    "adapter"}}}`` on the covered suites (the uncovered suite stays unknown to the routers)."""
    path = work.path("adapters", "review-scores.json")
    data = {d: {suite: {"base": scores["base"][suite]["perplexity"],
                        "adapter": scores[f"+{d}"][suite]["perplexity"]} for suite in COVERED}
            for d in COVERED}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    return path


def build_routers(work: Work, base: str, adapters: dict, paths: dict, scores: dict | None,
                  only: list[str] | None = None) -> dict[str, str]:
    """Build each router of :func:`router_specs` (``only``: these labels; ``scores``: the
    evaluations the reviews router reads, None when it is not built)."""
    key = work.key(*EVAL_FIELDS, "train_examples", extra=domains_key() + route_code_key())
    library = [a for d, path in adapters.items() for a in ("--adapter", f"{d}={path}")]
    scores_file = review_scores(work, scores) if scores else "(not evaluated)"
    specs = router_specs(paths, scores_file, contributor_examples(work, paths))
    unknown = sorted(set(only or []) - set(specs))
    if unknown:
        raise SystemExit(f"--routers: unknown router(s) {', '.join(unknown)} (known: "
                         f"{', '.join(specs)})")
    built = {}
    for label, extra in specs.items():
        if only and label not in only:
            continue
        out = work.path("routers", label)
        work.run(f"route-build-{label}", modelgit("route", "build", "--base", base, *library,
                                                  *extra, "-o", out, "--force", "--json"),
                 key, output=out)
        built[label] = out
    return built


def evaluate_routers(work: Work, routers: dict[str, str], merged: str, suites: str) -> dict:
    """``modelgit route eval`` of every router, hard and soft, beside base, adapters, oracle and
    the merged release: its JSON report."""
    run = work.run("route-eval", modelgit("route", "eval", *routers.values(), "--suites", suites,
                                          "--merged", merged, "--mode", "both", "--json"),
                   work.key(*EVAL_FIELDS, "train_examples",
                            extra=domains_key() + route_code_key() + ",".join(routers)))
    return json_of(run)


def targets_of(row: dict) -> dict[str, bool]:
    """The issue's three targets for one router row."""
    cost = row["cost"].get("ratio")
    return {f"keeps >= {TARGET_KEEP:.0%} of the oracle gain on every covered domain":
                row["min_kept"] is not None and row["min_kept"] >= TARGET_KEEP,
            f"loses <= {TARGET_UNCOVERED_LOSS:.0%} against the base on {UNCOVERED} (uncovered)":
                row["uncovered_loss"] is not None and row["uncovered_loss"] <= TARGET_UNCOVERED_LOSS,
            f"costs <= {TARGET_OVERHEAD:.0%} of the base forward per input":
                cost is not None and cost <= TARGET_OVERHEAD}


def router_figures(report: dict) -> dict:
    """Per router row: perplexity, gain kept against the benchmark's oracle (best adapter),
    accuracy against the oracle, and the pass/fail of the issue's targets."""
    suites = {s["suite"]: s for s in report["suites"]}
    rows = [r for r in next(iter(suites.values()))["values"] if r.startswith("router ")]
    out = {}
    for row in rows:
        label = row.split(" ")[1]
        per = {}
        for name, s in suites.items():
            values = s["values"]
            adapters = {k: v for k, v in values.items() if k.startswith("adapter ")}
            best = min(adapters.values())
            per[name] = {"perplexity": values[row],
                         "kept": kept_gain(values["base"], best, values[row]),
                         "vs_base": values[row] / values["base"] - 1,
                         "accuracy": s["routing_accuracy"][row], "chosen": s["chosen"][row],
                         "oracle": s["oracle"]}
        covered = [per[d]["kept"] for d in COVERED if per[d]["kept"] is not None]
        out[row] = {"domains": per, "cost": report["cost"].get(label, {}),
                    "min_kept": min(covered) if covered else None,
                    "uncovered_loss": per[UNCOVERED]["vs_base"] if UNCOVERED in per else None}
    return out


def route_classifiers(work: Work, minilm: str, classifiers: dict, paths: dict) -> dict:
    """Routers over the two classification adapters on MiniLM (arrow; examples: twelve
    training texts of each task), hard routing, ``modelgit route eval`` on both test splits."""
    key = work.key(*TASK_FIELDS, extra=route_code_key())
    library = [a for t, c in classifiers.items() for a in ("--adapter", f"{t}={c['adapter']}")]
    examples = []
    for task in TASKS:
        path = work.path("data", "tasks", task, "examples.jsonl")
        with open(paths["tasks"][task]["train"], encoding="utf-8") as source, \
                open(path, "w", encoding="utf-8") as handle:
            handle.writelines(source.readlines()[:12])
        examples += ["--examples", f"{task}={path}"]
    specs = {"arrow": ["--kind", "arrow"],
             "examples-base": ["--kind", "examples", "--embedder", "base:1", *examples],
             "examples-base-knn": ["--kind", "examples", "--embedder", "base:1", "--method",
                                   "knn", *examples],
             "examples-minilm": ["--kind", "examples", "--embedder", "minilm", *examples]}
    dirs = []
    for label, extra in specs.items():
        out = work.path("routers", f"cls-{label}")
        work.run(f"route-build-cls-{label}", modelgit(
            "route", "build", "--base", minilm, *library, *extra, "--threshold", "none", "-o", out,
            "--force", "--json"), key, output=out)
        dirs.append(out)
    run = work.run("route-eval-cls", modelgit("route", "eval", *dirs, "--suites",
                                              paths["task_suites"], "--mode", "hard", "--json"),
                   key)
    return json_of(run)


# ============================================================================ report
def environment(args) -> dict:
    def out(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            return ""

    with open("/proc/meminfo") as handle:
        mem = int(handle.readline().split()[1]) * 1024
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "rev": out("git", "rev-parse", "--short", "HEAD"), "cpus": os.cpu_count(),
            "mem_gb": round(mem / 1e9, 1), "python": platform.python_version(),
            "command": " ".join(["python3", "benchmarks/route.py", *sys.argv[1:]]),
            "load_at_start": os.getloadavg()}


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table (pipes aligned)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


def steps_table(steps: dict) -> str:
    """One row per measured step: wall, CPU-s, peak RSS (tree), cached or run now."""
    rows = []
    for name, r in steps.items():
        peak = r.get("peak_rss_mb")
        rows.append([name, f"{r['wall_s']:.1f}", f"{r['user_s'] + r['sys_s']:.1f}",
                     f"{peak:.0f}" if peak else "-", "cached" if r.get("cached") else "run"])
    return table(["step", "wall s", "CPU s", "peak RSS MB", "this run"], rows)


def perplexity_table(scores: dict, oracle: dict, extra: dict[str, dict[str, float]]) -> str:
    """Rows: base, adapters, oracle, release, routers; columns: domains (ppl and kept gain)."""
    domains = list(scores["base"])
    base = {d: scores["base"][d]["perplexity"] for d in domains}
    best = {d: scores[oracle[d]][d]["perplexity"] if d in oracle else None for d in domains}

    def cells(values: dict[str, float]) -> list[str]:
        out = []
        for d in domains:
            keep = kept_gain(base[d], best[d], values[d]) if d != UNCOVERED and best[d] else None
            delta = values[d] / base[d] - 1
            note = f"{keep:.0%}" if keep is not None else f"{delta:+.1%} vs base"
            out.append(f"{values[d]:.2f} ({note})")
        return out

    rows = [["base", *[f"{base[d]:.2f}" for d in domains]]]
    for label in scores:
        if label.startswith("+"):
            rows.append([label, *cells({d: scores[label][d]["perplexity"] for d in domains})])
    rows.append(["oracle (best adapter per domain)",
                 *[f"{best[d]:.2f} ({oracle[d]})" if d != UNCOVERED else "-" for d in domains]])
    rows.append(["release (TIES merge)", *cells({d: scores["release"][d]["perplexity"]
                                                 for d in domains})])
    for label, values in extra.items():
        rows.append([label, *cells(values)])
    header = ["model", *[f"{d}{' (uncovered)' if d == UNCOVERED else ''}" for d in domains]]
    return table(header, rows)


# ============================================================================ main
def main(argv=None) -> int:
    global COVERED, UNCOVERED
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny Llama base, few examples")
    parser.add_argument("--workdir", help="work directory, reused by later runs with the same "
                        "settings (default: a temporary directory, deleted at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    parser.add_argument("--model-cache", help="where SmolLM2 is converted once (default: "
                        "WORKDIR/models)")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--covered", default=",".join(COVERED),
                        help=f"domains with an adapter (default {','.join(COVERED)})")
    parser.add_argument("--uncovered", default=UNCOVERED,
                        help=f"a domain no adapter covers (default {UNCOVERED})")
    parser.add_argument("--routers", help="build and evaluate only these routers (comma-separated "
                        "labels, e.g. arrow,examples-base,examples-base-linear; default all)")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for benchmarks/git.py or store.py to finish")
    args = parser.parse_args(argv)
    measuring.WAIT_FOR_OTHERS = not args.no_wait
    COVERED, UNCOVERED = [d for d in args.covered.split(",") if d], args.uncovered
    if UNCOVERED in COVERED or len(COVERED) < 2:
        parser.error(f"--covered {args.covered} / --uncovered {args.uncovered}: give two or more "
                     "covered domains and an uncovered one that is not among them")
    signal.signal(signal.SIGTERM, stop)
    settings = QUICK if args.quick else FULL
    env = environment(args)
    root = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="modelgit-route-bench-")
    os.makedirs(root, exist_ok=True)
    work = Work(root, settings)
    say(f"working in {root} ({'quick: tiny Llama' if args.quick else 'SmolLM2-135M'}); "
        f"load {env['load_at_start'][0]:.1f}")
    try:
        figures = run_all(work, args)
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        elif not args.workdir:
            say(f"kept {root}")
    env["load_at_end"] = os.getloadavg()
    report = render(env, settings, work, figures)
    print("\n" + report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"environment": env, "settings": dataclasses.asdict(settings),
                       "figures": figures, "steps": {k: {x: y for x, y in v.items()
                                                          if x != "stdout_tail"}
                                                      for k, v in work.steps.items()}},
                      handle, indent=1, default=str)
        say(f"wrote {args.json}")
    return 0 if all(figures.get("passed", {}).values()) else 1


def stop(*_args) -> None:
    """On SIGTERM: end the running step's processes too (they would run on, unrecorded), then
    exit through the ``finally`` that removes a temporary work directory."""
    for pid in measuring._descendants(os.getpid())[1:]:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    sys.exit(143)


def run_all(work: Work, args) -> dict:
    from modelgit.demo_store import minilm_dir

    paths = prepare_data(work)
    base = prepare_base(work, paths, args.model_cache or work.path("models"))
    adapters = train_adapters(work, base, paths)
    merged = merge_release(work, base, adapters)
    only = [r for r in args.routers.split(",") if r] if args.routers else None
    # the routers' figures first, unless the reviews router needs the evaluations' scores
    if only and "reviews" not in only:
        routers = build_routers(work, base, adapters, paths, None, only)
        report = evaluate_routers(work, routers, merged, paths["suites"])
        scores = evaluate_lms(work, base, adapters, merged, paths["suites"])
    else:
        scores = evaluate_lms(work, base, adapters, merged, paths["suites"])
        routers = build_routers(work, base, adapters, paths, scores, only)
        report = evaluate_routers(work, routers, merged, paths["suites"])
    oracle = oracle_of(scores, adapters)
    classifiers = train_classifiers(work, minilm_dir(), paths)
    cls_report = route_classifiers(work, minilm_dir(), classifiers, paths)
    rows = router_figures(report)
    checks = {row: targets_of(r) for row, r in rows.items()}
    # the best router: the most targets met, then the largest smallest kept gain
    best = max(rows, key=lambda r: (sum(checks[r].values()), rows[r]["min_kept"] or -1e9))
    passed = {f"best router ({best.removeprefix('router ')}): {name}": ok
              for name, ok in checks[best].items()}
    return {"scores": scores, "oracle": oracle, "classifiers": classifiers, "adapters": adapters,
            "base": base, "merged": merged, "routers": rows, "route_report": report,
            "classifier_report": cls_report,
            "best_router": best, "passed": passed}


def render(env: dict, settings: Settings, work: Work, figures: dict) -> str:
    s = settings
    routers = figures["routers"]
    ppl_rows = {row.removeprefix("router "): {d: v["perplexity"] for d, v in r["domains"].items()}
                for row, r in routers.items()}
    lines = [f"`{env['command']}` on {env['date']}, rev {env['rev']}, {env['cpus']} cores, "
             f"{env['mem_gb']} GB RAM; load average {env['load_at_start'][0]:.1f} at start, "
             f"{env['load_at_end'][0]:.1f} at end",
             "",
             f"Base {s.base}; {len(COVERED)} covered domains ({', '.join(COVERED)}), uncovered "
             f"{UNCOVERED}; {s.train} train / {s.heldout} held-out / {s.validation} validation "
             f"texts per domain of at most {s.max_chars} characters; LoRA rank {s.rank}, "
             f"{s.steps} steps of {s.batch_size}, max length {s.max_length}, lr {s.lr}. Router "
             f"examples: the covered domains' {s.validation} validation texts; `linear` routers: "
             f"the first {s.train_examples} training texts of each adapter's domain.",
             "", "Per-domain perplexity on held-out text (lower is better); in parentheses the "
             "share of the oracle adapter's gain over the base kept (uncovered domain: change "
             "against the base). Adapters, base and release: `modelgit eval`; routers: "
             "`modelgit route eval`.", "",
             perplexity_table(figures["scores"], figures["oracle"], ppl_rows),
             "", "Routers: the smallest share of the oracle gain kept over the covered domains, "
             "routing accuracy against the oracle (decisions equal to the best adapter of the "
             "domain; uncovered: the best of base and adapters), the uncovered domain's change "
             "against the base, and the router's CPU time per input over the base forward's "
             "(each input alone)", "", router_table(routers, figures["route_report"])]
    lines += ["", "Targets (issue 13)", "",
              table(["target", "result"], [[k, "PASS" if v else "FAIL"]
                                           for k, v in figures["passed"].items()])]
    lines += ["", check_line(figures)]
    lines += ["", "MiniLM (all-MiniLM-L6-v2) with two classification LoRAs (man-page section "
              "1/3/5/8; source language c/perl/python/shell): accuracy on each task's test split "
              "of each adapter alone (`modelgit eval` / `route eval`) and routed (hard; the "
              "router decides which task's adapter and head classify the text)", "",
              classifier_table(figures)]
    lines += ["", "Steps (child processes; CPU = user + sys; peak RSS of the process tree)", "",
              steps_table(work.steps)]
    return "\n".join(lines)


def router_table(routers: dict, report: dict) -> str:
    rows = []
    for row, r in routers.items():
        per = r["domains"]
        accuracy = " ".join(f"{per[d]['accuracy']:.0%}" for d in per)
        cost = r["cost"].get("ratio")
        chosen = per.get(UNCOVERED, {}).get("chosen", {})
        rows.append([row.removeprefix("router "),
                     f"{r['min_kept']:.0%}" if r["min_kept"] is not None else "-", accuracy,
                     f"{r['uncovered_loss']:+.1%}" if r["uncovered_loss"] is not None else "-",
                     ", ".join(f"{k} {v}" for k, v in sorted(chosen.items(), key=lambda x: -x[1])),
                     f"{cost:.1%}" if cost is not None else "-"])
    domains = " ".join(s["suite"] for s in report["suites"])
    return table(["router", "min kept (covered)", f"accuracy ({domains})",
                  f"{UNCOVERED} vs base", f"{UNCOVERED} sent to", "CPU / base forward"], rows)


def classifier_table(figures: dict) -> str:
    report = figures["classifier_report"]
    suites = report["suites"]
    names = [s["suite"] for s in suites]
    header = ["model", *[f"{n} accuracy" for n in names], "routing accuracy", "CPU / base forward"]
    rows = [["`modelgit eval`, adapter alone", *[f"{figures['classifiers'][n]['accuracy']:.3f}"
                                                for n in names], "", ""]]
    for row in suites[0]["values"]:
        if row == "oracle":
            continue
        accuracy = [s["routing_accuracy"].get(row) for s in suites]
        label = row.split(" ")[1] if row.startswith("router ") else None
        cost = report["cost"].get(label, {}).get("ratio") if label else None
        rows.append([row, *[f"{s['values'][row]:.3f}" for s in suites],
                     " ".join(f"{a:.0%}" for a in accuracy) if row.startswith("router ") else "",
                     f"{cost:.1%}" if cost is not None else ""])
    return table(header, rows)


def check_line(figures: dict) -> str:
    """``modelgit eval`` and ``route eval`` compute the same perplexities: their largest gap."""
    gaps = []
    for s in figures["route_report"]["suites"]:
        values = s["values"]
        pairs = [("base", "base"), ("release", "merged"),
                 *[(f"+{d}", f"adapter {d}") for d in COVERED]]
        for ours, theirs in pairs:
            if theirs in values:
                a = figures["scores"][ours][s["suite"]]["perplexity"]
                gaps.append(abs(values[theirs] / a - 1))
    return (f"Cross-check: `modelgit eval` and `modelgit route eval` agree on base, adapters and "
            f"release within {max(gaps):.2e} (relative) over {len(gaps)} values.")


if __name__ == "__main__":
    sys.exit(main())
