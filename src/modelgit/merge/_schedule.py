"""Run the tensors of a merge on worker threads, within a memory budget.

Each output tensor is one task: it reads its inputs, computes and writes its bytes at their
place in the output (see :mod:`.writer`), so tasks are independent and may finish in any order.
torch releases the GIL inside its kernels, and so do numpy, ``pread`` and ``pwrite``: worker
threads use the cores without the per-operation thread handoff of torch's intra-op pool, which
on 262,144-element blocks cost more than the arithmetic (see :mod:`modelgit._threads`).

Tasks start in plan order. Each declares the memory it needs at its peak; a task starts only
when the running ones' needs plus its own fit the budget (a task alone always starts), so two
large tensors never hold their working sets at once, while small ones run side by side.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

__all__ = ["Task", "run_tasks", "torch_threads"]


@dataclass(frozen=True)
class Task:
    """One unit of work: ``run()``, needing about ``memory`` bytes at its peak."""

    run: Callable[[], None]
    memory: int


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for the calling thread, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Gate:
    """Admits at most ``slots`` tasks at a time, while the memory they need together fits
    ``budget`` (one task alone always fits)."""

    def __init__(self, slots: int, budget: int):
        self.slots, self.budget, self.used, self.running = slots, budget, 0, 0
        self.cond = threading.Condition()

    def enter(self, need: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.running == 0 or (
                self.running < self.slots and self.used + need <= self.budget))
            self.used += need
            self.running += 1

    def leave(self, need: int) -> None:
        with self.cond:
            self.used -= need
            self.running -= 1
            self.cond.notify_all()


def run_tasks(tasks: Sequence[Task], workers: int, intra_op: int, budget: int) -> None:
    """Run every task, ``workers`` at a time, each with ``intra_op`` torch threads.

    Args:
        tasks: in the order they should start.
        workers: tasks running at once (1: all of them in the calling thread, in order).
        intra_op: torch's intra-op threads inside each task.
        budget: bytes the running tasks may need together (see the module docstring).

    Raises:
        The exception of the earliest task (in ``tasks`` order) that failed; once one fails,
        no further task starts, and the running ones are waited for.
    """
    if workers <= 1 or len(tasks) <= 1:
        with torch_threads(intra_op):
            for task in tasks:
                task.run()
        return
    gate = _Gate(workers, budget)
    failures: dict[int, BaseException] = {}
    lock = threading.Lock()

    def run(index: int, task: Task) -> None:
        try:
            with lock:
                if failures:  # admitted before another task failed: not started
                    return
            task.run()
        except BaseException as exc:  # reported by the dispatcher, in task order
            with lock:
                failures[index] = exc
        finally:
            gate.leave(task.memory)

    before = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="modelgit-merge",
                                initializer=torch.set_num_threads, initargs=(intra_op,)) as pool:
            for index, task in enumerate(tasks):
                gate.enter(task.memory)
                with lock:
                    stop = bool(failures)
                if stop:
                    gate.leave(task.memory)
                    break
                pool.submit(run, index, task)
    finally:
        torch.set_num_threads(before)  # a worker's set_num_threads also changes the default
    if failures:
        raise failures[min(failures)]
