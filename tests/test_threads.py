"""The thread and worker counts chosen from the work's size and the machine."""

from __future__ import annotations

import pytest

from modelgit._threads import WORK_PER_THREAD, Machine, choose_threads, choose_workers


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv("MODELGIT_THREADS", raising=False)


def test_small_work_gets_one_thread_whatever_the_cores():
    assert choose_threads(1e6, Machine(cores=64, load=0.0)) == 1
    assert choose_threads(WORK_PER_THREAD * 0.99, Machine(cores=64, load=0.0)) == 1


def test_large_work_gets_the_idle_cores():
    big = WORK_PER_THREAD * 1000
    assert choose_threads(big, Machine(cores=8, load=0.0)) == 8
    assert choose_threads(big, Machine(cores=8, load=5.2)) == 3
    assert choose_threads(big, Machine(cores=2, load=2.4)) == 1  # a busy 2-core machine
    assert choose_threads(big, Machine(cores=2, load=40.0)) == 1
    assert choose_threads(WORK_PER_THREAD * 3, Machine(cores=8, load=0.0)) == 3


def test_the_environment_overrides(monkeypatch):
    monkeypatch.setenv("MODELGIT_THREADS", "5")
    assert choose_threads(1.0, Machine(cores=2, load=9.0)) == 5
    monkeypatch.setenv("MODELGIT_THREADS", "zero")
    assert choose_threads(1.0, Machine(cores=2, load=9.0)) == 1


def test_the_current_machine_is_read():
    machine = Machine.current()
    assert machine.cores >= 1 and machine.load >= 0 and 1 <= machine.idle_cores <= machine.cores
    assert 1 <= choose_threads(WORK_PER_THREAD * 100) <= machine.cores


def test_workers_need_jobs_work_cores_and_memory():
    idle = Machine(cores=4, load=0.0, available_bytes=16 << 30)
    assert choose_workers(1, 1e15, 1 << 20, idle) == 1  # one job
    assert choose_workers(5, 1e6, 1 << 20, idle) == 1  # too little work to start a process
    assert choose_workers(5, 1e15, 1 << 20, idle) == 4
    assert choose_workers(3, 1e15, 1 << 20, idle) == 3
    assert choose_workers(5, 1e15, 3 << 30, idle) == 2  # half the memory holds two
    assert choose_workers(5, 1e15, 1 << 20, Machine(cores=4, load=3.9)) == 1


def test_busy_cores_now_reads_the_share_of_busy_time():
    from modelgit._threads import busy_cores_now

    samples = iter([(1000, 2000), (1150, 2200)])  # 150 of 200 jiffies idle: a quarter busy
    busy = busy_cores_now(2, counters=lambda: next(samples), sleep=lambda s: None)
    import os
    assert busy == pytest.approx(min(2.0, 0.25 * os.cpu_count()))
    assert busy_cores_now(2, counters=lambda: None, sleep=lambda s: None) is None


def test_a_machine_busy_only_with_our_own_past_minute_gets_its_cores(monkeypatch):
    """An idle 2-core machine whose load average (1.0) is this process's own last minute: the
    cores busy now (none) win, so the work gets both cores."""
    import modelgit._threads as threads

    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    monkeypatch.setattr(threads, "busy_cores_now", lambda cores: 0.0)
    machine = threads.Machine.current()
    assert machine.load == 0.0
    monkeypatch.setattr(threads, "busy_cores_now", lambda cores: 1.8)  # others busy now too
    assert threads.Machine.current().load == 1.0
