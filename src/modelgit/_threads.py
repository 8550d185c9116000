"""How many threads a piece of CPU work should use, from its size and the machine's load.

torch's default — one intra-op thread per core for every operation — is the wrong choice in
two common cases. Small operations (a 262,144-element ``add_``, a LoRA step of a tiny model)
spend more time waking and synchronising threads than computing; and on a machine whose other
cores are busy, each operation waits for its slowest thread while the others spin: a merge took
10x the CPU time, a training step ran ~20x slower. Independent pieces of work (the tensors of a
merge, the batches of an evaluation) scale better on worker threads of their own, each with one
intra-op thread: they never wait for each other.

:func:`plan_threads` is the one rule, shared by every command that computes with torch::

    plan = plan_threads(items=len(tensors), item_size=largest.numel())
    # plan.workers tasks at once, each under torch.set_num_threads(plan.intra_op)

* cores: the CPUs this process may run on, or ``MODELGIT_THREADS`` when set (the user's choice:
  the load is then not looked at);
* free cores: the cores minus the 1-minute load average (rounded; at least 1). The load counts
  runnable processes, this one too if it has been busy for the last minute;
* workers: one per free core, at most one per item;
* intra-op threads: the free cores left per worker, but only as many as the item's size gives
  each at least ``grain`` elements (default 2^20, about a millisecond of elementwise work), and at
  most ``max_intra_op`` (the merge passes 1: its reductions then give the same bits everywhere).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

__all__ = ["ThreadPlan", "plan_threads", "available_cores", "DEFAULT_GRAIN"]

DEFAULT_GRAIN = 1 << 20  # elements per intra-op thread below which a thread costs more than it gives


@dataclass(frozen=True)
class ThreadPlan:
    """``workers`` tasks at once, each computing with ``intra_op`` torch threads."""

    intra_op: int
    workers: int


def available_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores free for this process: ``cores`` (default: the CPUs it may run on, or
    ``MODELGIT_THREADS``) minus ``load`` (default: the 1-minute load average), at least 1."""
    if cores is None:
        env = os.environ.get("MODELGIT_THREADS", "")
        if env.isdigit() and int(env) > 0:
            return int(env)  # the user's choice: the load is not second-guessed
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, math.floor(cores - load + 0.5)))


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
