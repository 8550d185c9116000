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
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Machine", "choose_threads", "choose_workers", "WORK_PER_THREAD", "thread_override"]

#: floating-point operations a thread must get per unit of work to be worth its barriers (about
#: 0.1 s of one core; measured in benchmarks/README.md, "Training and evaluation threads")
WORK_PER_THREAD = 1e9


@dataclass(frozen=True)
class Machine:
    """What the choice depends on: usable cores, load of the others, memory available."""

    cores: int
    load: float
    available_bytes: int | None = None

    @classmethod
    def current(cls) -> "Machine":
        """This process's view: its CPU affinity, the 1-minute load average, MemAvailable."""
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
        return cls(max(1, cores), max(0.0, load), _mem_available())

    @property
    def idle_cores(self) -> int:
        """Cores the others leave free (at least 1: the work has to run somewhere)."""
        return max(1, min(self.cores, int(self.cores - self.load + 0.5)))


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
