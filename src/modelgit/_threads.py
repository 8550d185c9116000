"""How many CPU threads (and worker processes) a piece of work should use on this machine.

torch's default is one thread per core whatever the work and whatever else runs. Both are
wrong often enough to matter: a small step split over threads spends its time in the thread
pool's barriers, and on a busy machine a thread that is descheduled stalls every other thread at
the next barrier (a LoRA step of SmolLM2 on a loaded 2-core machine ran ~20x slower with torch's
2 threads than with 1). So the count comes from two facts:

* the work's size: floating-point operations of one unit that runs as a whole (a training
  step, an evaluation batch); below :data:`WORK_PER_THREAD` per thread, another thread costs
  more than it brings;
* the machine: the cores this process may use, less the load the others put on them (the
  1-minute load average, rounded), never below 1. Erring low costs at most the idle cores;
  erring high can cost far more, so the load is not discounted for our own past activity.

``MODELGIT_THREADS`` (a positive integer) overrides the choice everywhere; an explicit
``--threads`` does for its command.

Independent pieces of work (the tensors of a merge) scale better on worker threads of their
own, each with one intra-op thread: they never wait for each other. :func:`plan_threads` plans
those::

    plan = plan_threads(items=len(tensors), item_size=largest.numel())
    # plan.workers tasks at once, each under torch.set_num_threads(plan.intra_op)

workers: one per idle core, at most one per item; intra-op threads: the idle cores left per
worker, but only as many as give each at least ``grain`` elements (default 2^20, about a
millisecond of elementwise work), and at most ``max_intra_op`` (the merge passes 1: its
reductions then give the same bits everywhere).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Machine", "choose_threads", "choose_workers", "WORK_PER_THREAD", "thread_override",
           "ThreadPlan", "plan_threads", "available_cores", "DEFAULT_GRAIN", "busy_cores_now"]

#: floating-point operations a thread must get per unit of work to be worth its barriers (about
#: 0.1 s of one core; measured in benchmarks/README.md, "Training and evaluation threads")
WORK_PER_THREAD = 1e9
#: elements per intra-op thread below which a thread costs more than it gives
DEFAULT_GRAIN = 1 << 20


@dataclass(frozen=True)
class Machine:
    """What the choice depends on: usable cores, load of the others, memory available."""

    cores: int
    load: float
    available_bytes: int | None = None

    @classmethod
    def current(cls) -> "Machine":
        """This process's view: its CPU affinity, the load of the others (the smaller of the
        1-minute load average and the cores busy right now, :func:`busy_cores_now`),
        MemAvailable."""
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
        busy = busy_cores_now(cores)
        if busy is not None:  # the load average also counts our own last minute: see below
            load = min(load, busy)
        return cls(max(1, cores), max(0.0, load), _mem_available())

    @property
    def idle_cores(self) -> int:
        """Cores the others leave free (at least 1: the work has to run somewhere)."""
        return max(1, min(self.cores, int(self.cores - self.load + 0.5)))


#: how long the CPU counters are watched, and how long a sample is reused within a process
_SAMPLE_SECONDS, _SAMPLE_REUSE = 0.2, 5.0
_sample_cache: dict = {}


def _cpu_counters() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:9] if v.isdigit()]
    return values[3] + (values[4] if len(values) > 4 else 0), sum(values)


def busy_cores_now(cores: int, counters=_cpu_counters, sleep=None) -> float | None:
    """Cores the other processes keep busy right now: the CPUs' busy share over a short look
    (``_SAMPLE_SECONDS``, while this process sleeps) times ``cores``; None when unknown.

    The 1-minute load average alone misjudges a machine this process itself just kept busy:
    a demo that has worked for a minute sees a load of ~1 on an idle 2-core machine and would
    train with one thread (half the speed). The smaller of the two is taken: a machine is busy
    only if it is busy now and was over the last minute. A sample is reused for a few seconds.
    """
    import time

    now = time.monotonic()
    cached = _sample_cache.get(cores)
    if cached and now - cached[0] < _SAMPLE_REUSE and counters is _cpu_counters:
        return cached[1]
    first = counters()
    (sleep or time.sleep)(_SAMPLE_SECONDS)
    second = counters()
    if first is None or second is None or second[1] <= first[1]:
        return None
    idle_share = (second[0] - first[0]) / (second[1] - first[1])
    busy = max(0.0, min(1.0, 1.0 - idle_share)) * os.cpu_count() if os.cpu_count() else None
    busy = None if busy is None else min(float(cores), busy)
    if counters is _cpu_counters:
        _sample_cache[cores] = (now, busy)
    return busy


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def thread_override() -> int | None:
    """``MODELGIT_THREADS`` when it is a positive integer, else None."""
    value = os.environ.get("MODELGIT_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def choose_threads(work: float, machine: Machine | None = None) -> int:
    """Threads for work whose units each take ``work`` floating-point operations.

    Args:
        work: operations of one unit that runs as a whole, e.g. ``6 * parameters * tokens``
            for a training step, ``2 * parameters * tokens`` for an evaluation batch.
        machine: the machine to plan for (default: :meth:`Machine.current`).
    Returns:
        A thread count >= 1: ``MODELGIT_THREADS`` when set, else the smaller of the idle cores
        and ``work / WORK_PER_THREAD``.
    """
    forced = thread_override()
    if forced:
        return forced
    machine = machine or Machine.current()
    by_work = max(1, int(work // WORK_PER_THREAD))
    return max(1, min(machine.idle_cores, by_work))


def choose_workers(jobs: int, work: float, job_bytes: int, machine: Machine | None = None,
                   startup_work: float = 2e10) -> int:
    """Worker processes for ``jobs`` independent jobs of ``work`` operations each, each holding
    ``job_bytes`` of memory.

    A worker is worth starting only when a job's work is well above the cost of starting one
    (importing torch and transformers and loading the model: ``startup_work``); then as many as
    there are jobs, idle cores, and room in the available memory (keeping half of it free).

    Returns:
        A count >= 1 (1: run the jobs in this process, one after another).
    """
    machine = machine or Machine.current()
    if jobs < 2 or work < startup_work:
        return 1
    count = min(jobs, machine.idle_cores)
    if machine.available_bytes and job_bytes > 0:
        count = min(count, max(1, machine.available_bytes // 2 // job_bytes))
    return max(1, count)


@dataclass(frozen=True)
class ThreadPlan:
    """``workers`` tasks at once, each computing with ``intra_op`` torch threads."""

    intra_op: int
    workers: int


def available_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores free for this process: ``cores`` (default: the CPUs it may run on, or
    ``MODELGIT_THREADS``) minus ``load`` (default: the 1-minute load average), at least 1."""
    if cores is None and thread_override():
        return thread_override()  # the user's choice: the load is not second-guessed
    current = Machine.current() if cores is None or load is None else None
    return Machine(cores if cores is not None else current.cores,
                   load if load is not None else current.load).idle_cores


def plan_threads(items: int, item_size: float, *, grain: float = DEFAULT_GRAIN, max_intra_op: int | None = None,
                 cores: int | None = None, load: float | None = None) -> ThreadPlan:
    """Worker and intra-op thread counts for ``items`` independent pieces of work.

    Args:
        items: pieces of work that may run at the same time (1 for a training loop, the tensor
            count for a merge).
        item_size: the size of one piece's operations, in elements (e.g. the numel of the
            largest tensor an operation touches).
        grain: the least number of elements worth an intra-op thread.
        max_intra_op: a cap on the intra-op threads (1: no operation is split, so reductions
            give the same bits whatever the machine).
        cores, load: see :func:`available_cores` (given explicitly by tests).

    Returns:
        A :class:`ThreadPlan`; both counts are at least 1.
    """
    free = available_cores(cores, load)
    workers = max(1, min(free, items))
    intra = max(1, min(free // workers, int(item_size // grain) if grain > 0 else free))
    if max_intra_op is not None:
        intra = max(1, min(intra, max_intra_op))
    return ThreadPlan(intra, workers)
