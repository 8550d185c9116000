"""Bounded parallel map: results in submission order, at most ``window`` tasks in flight.

The bound keeps peak memory at ``window`` × (one chunk) whatever the checkpoint size; threads
suffice because hashing (blake3), compression (zstd), numpy and file I/O release the GIL.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

__all__ = ["ordered_map", "default_workers"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    env = os.environ.get("MODELGIT_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(8, os.cpu_count() or 1))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                window: int | None = None) -> Iterator[R]:
    """Like ``map(fn, items)`` on a thread pool, lazily, in order, with bounded look-ahead."""
    workers = workers or default_workers()
    window = window or 2 * workers
    if workers == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="modelgit") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
