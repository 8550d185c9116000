"""Evaluate several models (a base alone, the base with each of several adapters) at once.

A review of N adapters is N + 1 independent evaluations. Where the work is large enough to pay
for starting a process (importing torch and transformers, loading the model) and the machine
has idle cores and memory, they run in worker processes, each with its share of the idle cores
as threads; otherwise one after another in this process, each with the threads its batches
warrant (see :mod:`modelgit._threads`). Either way every job's failure is returned as that
job's :class:`EvalFailure`, never raised, so the caller can reject one adapter and go on with
the others; a worker that dies (killed, out of memory) is not trusted with the remaining jobs,
which then run in this process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ModelgitError

__all__ = ["EvalJob", "EvalFailure", "evaluate_jobs", "plan_workers"]


@dataclass(frozen=True)
class EvalJob:
    """One model to evaluate: ``model_dir`` with the adapter in ``adapter_dir`` (or alone) on
    ``suites``."""

    model_dir: str
    adapter_dir: str | None
    suites: tuple


@dataclass(frozen=True)
class EvalFailure:
    """Why a job produced no results. ``expected``: a ModelgitError or an OSError (unreadable,
    unloadable, unsuitable input); otherwise an unexpected exception (a bug, or a hostile file
    that found one)."""

    message: str
    type_name: str
    expected: bool


def _run_job(job: EvalJob, progress, confidence: float) -> list[dict] | EvalFailure:
    from .run import evaluate_suites

    try:
        return evaluate_suites(job.model_dir, job.adapter_dir, list(job.suites), progress, confidence)
    except (ModelgitError, OSError) as exc:
        return EvalFailure(str(exc), type(exc).__name__, True)
    except Exception as exc:  # noqa: BLE001  one job's surprise must not stop the others
        return EvalFailure(str(exc)[:300], type(exc).__name__, False)


def _worker_init(threads: int) -> None:
    # each worker gets its share of the idle cores; progress is shown by the parent, per job
    os.environ["MODELGIT_THREADS"] = str(threads)
    os.environ["MODELGIT_PROGRESS"] = "0"


def _weights_bytes(model_dir: str) -> int:
    return sum(os.path.getsize(os.path.join(model_dir, name)) for name in os.listdir(model_dir)
               if name.endswith((".safetensors", ".bin")))


def _data_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def plan_workers(jobs: list[EvalJob], machine=None) -> int:
    """Worker processes for ``jobs`` (1: run them here), from the largest job's work (about
    2 operations per weight per token, ~4 bytes of text per token) and memory (the float32
    model twice over, plus ~400 MB for torch itself)."""
    from .._threads import Machine, choose_workers, thread_override

    if len(jobs) < 2:
        return 1
    machine = machine or Machine.current()
    weights = _weights_bytes(jobs[0].model_dir)
    params = weights / 2  # bf16 or fp32 on disk: erring towards fewer workers either way
    tokens = max(sum(min(_data_bytes(s.data) / 4,
                         (s.max_examples or float("inf")) * s.max_length) for s in job.suites)
                 for job in jobs)
    count = choose_workers(len(jobs), 2 * params * tokens, int(params * 4 * 2 + (400 << 20)),
                           machine)
    forced = thread_override()
    return min(count, forced) if forced else count


def evaluate_jobs(jobs: list[EvalJob], progress: bool | None = False, confidence: float = 0.95,
                  workers: int | None = None, label=None) -> list[list[dict] | EvalFailure]:
    """The results of every job (``evaluate_suites``' list) or its :class:`EvalFailure`, in
    the order of ``jobs``.

    Args:
        workers: worker processes (None: :func:`plan_workers`; 1: one after another here).
        label: ``label(job) -> str`` naming a job in progress lines (default: its adapter).
    """
    from ..progress import note, progress_bar

    if not jobs:
        return []
    workers = max(1, min(len(jobs), workers or plan_workers(jobs)))
    label = label or (lambda job: job.adapter_dir or job.model_dir)
    results: list = [None] * len(jobs)
    with progress_bar(len(jobs), "evaluate", progress, unit="model") as bar:
        if workers > 1:
            _in_workers(jobs, results, workers, confidence, bar)
        for i, job in enumerate(jobs):
            if results[i] is None:  # one after another, or left by a worker that died
                note(f"evaluating {label(job)} ({i + 1} of {len(jobs)})", progress)
                results[i] = _run_job(job, progress, confidence)
                bar.update(1)
    return results


def _in_workers(jobs, results, workers: int, confidence: float, bar) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from .._threads import Machine

    threads = max(1, Machine.current().idle_cores // workers)
    # spawn, not fork: a forked copy of a process that already runs torch's thread pools can hang
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_run_job, job, False, confidence): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                try:
                    results[futures[future]] = future.result()
                except BrokenProcessPool:
                    continue  # the remaining jobs run in this process
                bar.update(1)
    except BrokenProcessPool:
        pass
