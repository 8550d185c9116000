"""The merge's worker threads: memory budget, torch threads, errors in task order."""

import threading

import pytest
import torch

from modelgit.merge._schedule import Task, run_tasks

WAIT = 120  # seconds a task waits for its partner before the test fails (never reached when right)


class Tracker:
    def __init__(self):
        self.lock = threading.Lock()
        self.running, self.memory, self.peak_memory, self.peak_running = 0, 0, 0, 0
        self.order, self.threads = [], set()

    def task(self, name, memory, body=None):
        def run():
            with self.lock:
                self.running += 1
                self.memory += memory
                self.peak_running = max(self.peak_running, self.running)
                self.peak_memory = max(self.peak_memory, self.memory)
                self.order.append(name)
                self.threads.add(torch.get_num_threads())
            try:
                if body:
                    body()
            finally:
                with self.lock:
                    self.running -= 1
                    self.memory -= memory
        return Task(run, memory)


def test_small_tasks_run_side_by_side_and_large_ones_alone():
    tracker = Tracker()
    both = threading.Barrier(2, timeout=WAIT)  # the two small tasks must meet: they run at once
    tasks = [tracker.task("small1", 10, both.wait), tracker.task("small2", 10, both.wait),
             tracker.task("large1", 100), tracker.task("large2", 100), tracker.task("small3", 10)]
    before = torch.get_num_threads()
    run_tasks(tasks, workers=2, intra_op=1, budget=100)
    assert tracker.peak_running == 2
    assert tracker.peak_memory <= 100  # the large ones never overlapped anything
    assert tracker.threads == {1}  # every task computed with one intra-op thread
    assert torch.get_num_threads() == before
    assert sorted(tracker.order) == ["large1", "large2", "small1", "small2", "small3"]


def test_a_task_larger_than_the_budget_still_runs_alone():
    tracker = Tracker()
    run_tasks([tracker.task("a", 10), tracker.task("huge", 10**12), tracker.task("b", 10)],
              workers=3, intra_op=1, budget=100)
    assert tracker.order.index("huge") == 1 and tracker.peak_memory == 10**12


def test_the_earliest_failure_is_raised_and_no_task_starts_after_it():
    started = []
    failed_late = threading.Event()

    def fail(name, wait_for=None):
        def run():
            started.append(name)
            if wait_for is not None:
                assert wait_for.wait(WAIT)
            raise ValueError(name)
        return run

    def late():
        started.append("late")
        failed_late.set()
        raise KeyError("late")

    # task 0 fails only after task 1 has failed: the error of task 0 is still the one raised
    tasks = [Task(fail("first", failed_late), 1), Task(late, 1)] + \
        [Task(lambda i=i: started.append(i), 1) for i in range(20)]
    with pytest.raises(ValueError, match="first"):
        run_tasks(tasks, workers=2, intra_op=1, budget=10)
    assert set(started) == {"first", "late"}  # a failure is recorded before its slot is freed


def test_one_worker_runs_in_order_in_the_calling_thread():
    seen = []
    caller = threading.get_ident()
    before = torch.get_num_threads()
    tasks = [Task(lambda i=i: seen.append((i, threading.get_ident(), torch.get_num_threads())), 1)
             for i in range(5)]
    run_tasks(tasks, workers=1, intra_op=1, budget=1)
    assert seen == [(i, caller, 1) for i in range(5)]
    assert torch.get_num_threads() == before
