"""The thread rule shared by the commands that compute with torch."""

import pytest

from modelgit._threads import DEFAULT_GRAIN, ThreadPlan, available_cores, plan_threads


@pytest.mark.parametrize("cores,load,free", [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 7.5, 1),
                                             (8, 2.2, 6), (8, 0.0, 8), (1, 0.0, 1)])
def test_free_cores_are_the_cores_minus_the_load(cores, load, free, monkeypatch):
    monkeypatch.delenv("MODELGIT_THREADS", raising=False)
    assert available_cores(cores, load) == free


def test_modelgit_threads_is_the_users_choice_whatever_the_load(monkeypatch):
    monkeypatch.setenv("MODELGIT_THREADS", "3")
    assert available_cores(load=50.0) == 3
    assert plan_threads(100, 1e9, load=50.0) == ThreadPlan(intra_op=1, workers=3)


def test_the_default_looks_at_this_machine(monkeypatch):
    monkeypatch.delenv("MODELGIT_THREADS", raising=False)
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr("modelgit._threads.busy_cores_now", lambda cores: None)  # load average only
    assert available_cores() == 3
    monkeypatch.setattr("os.getloadavg", lambda: (2.0, 0.0, 0.0))
    assert available_cores() == 1


def test_independent_items_get_the_cores_as_workers(monkeypatch):
    monkeypatch.delenv("MODELGIT_THREADS", raising=False)
    assert plan_threads(147, 32e6, cores=2, load=0.0) == ThreadPlan(intra_op=1, workers=2)
    assert plan_threads(147, 32e6, cores=2, load=1.2) == ThreadPlan(intra_op=1, workers=1)


def test_one_item_splits_its_operations_only_when_they_are_large(monkeypatch):
    monkeypatch.delenv("MODELGIT_THREADS", raising=False)
    # a training step of a tiny model: one thread, whatever the machine
    assert plan_threads(1, 50_000, cores=8, load=0.0) == ThreadPlan(intra_op=1, workers=1)
    # large operations on an idle machine: the free cores, one per grain of work
    assert plan_threads(1, 3 * DEFAULT_GRAIN, cores=8, load=0.0) == ThreadPlan(intra_op=3, workers=1)
    assert plan_threads(1, 100 * DEFAULT_GRAIN, cores=8, load=0.0) == ThreadPlan(intra_op=8, workers=1)
    # ... and on a busy one, only the free ones: threads waiting on a busy core spin
    assert plan_threads(1, 100 * DEFAULT_GRAIN, cores=8, load=6.0) == ThreadPlan(intra_op=2, workers=1)
    assert plan_threads(1, 100 * DEFAULT_GRAIN, cores=2, load=1.0) == ThreadPlan(intra_op=1, workers=1)


def test_few_large_items_share_the_cores(monkeypatch):
    monkeypatch.delenv("MODELGIT_THREADS", raising=False)
    assert plan_threads(2, 100 * DEFAULT_GRAIN, cores=8, load=0.0) == ThreadPlan(intra_op=4, workers=2)
    assert plan_threads(2, 100 * DEFAULT_GRAIN, cores=8, load=0.0, max_intra_op=1) == ThreadPlan(1, 2)
    assert plan_threads(0, 0, cores=4, load=0.0) == ThreadPlan(intra_op=1, workers=1)
