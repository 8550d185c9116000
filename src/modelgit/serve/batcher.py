"""Collects concurrent requests into batches for the engine's one thread.

The first request of a batch waits up to the batching window for others, or until the batch is
full; requests that arrive while a batch runs form the next one. A batch holds one task and one
sampling setting, in arrival order; the engine splits it further when it needs more adapters
than the pool holds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass

__all__ = ["Batcher"]


@dataclass
class _Pending:
    kind: str
    job: object
    future: asyncio.Future
    arrived: float

    @property
    def key(self) -> tuple:
        return (self.kind, getattr(self.job, "sampling", None))


class Batcher:
    """Args:
        engine: an :class:`~.engine.Engine`; metrics: :class:`~.metrics.Metrics`.
        window_ms: the batching window; max_batch: the most requests per batch.
        executor: the one-thread executor running the engine, shared with other batchers
            (None: this batcher makes its own and shuts it down when it stops).
    """

    def __init__(self, engine, metrics, window_ms: float, max_batch: int, executor=None):
        self.engine, self.metrics = engine, metrics
        self.window, self.max_batch = window_ms / 1000.0, max_batch
        self._pending: list[_Pending] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # one thread: the model is used by one batch at a time
        self._owns_executor = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="modelgit-engine")

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._owns_executor:
            self.executor.shutdown(wait=True)

    async def submit(self, kind: str, job):
        """The result of ``job``; raises its error."""
        if self._task is None:
            self.start()
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(kind, job, future, time.monotonic()))
        self._wake.set()
        return await future

    def run_alone(self, kind: str, job):
        """The result of ``job`` run now on the engine's thread (a helper for callers that hold
        no event loop, e.g. benchmarks; it waits for the running batch)."""
        return self.executor.submit(self.engine.run, kind, [job]).result()[0]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if not self._pending:
                self._wake.clear()
                continue
            deadline = self._pending[0].arrived + self.window
            while len(self._pending) < self.max_batch and time.monotonic() < deadline:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), deadline - time.monotonic())
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            started = time.monotonic()
            for item in batch:
                self.metrics.queue_wait.observe(started - item.arrived)
            self.metrics.batch_size.labels(batch[0].kind).observe(len(batch))
            self.metrics.batch_adapters.observe(len({getattr(i.job, "adapter", None)
                                                     for i in batch}))
            try:
                results = await loop.run_in_executor(self.executor, self.engine.run,
                                                     batch[0].kind, [i.job for i in batch])
            except Exception as exc:  # noqa: BLE001 - never lose the loop
                results = [exc] * len(batch)
            for item, result in zip(batch, results):
                if item.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
            if self._pending:
                self._wake.set()

    def _take(self) -> list[_Pending]:
        key = self._pending[0].key
        batch, rest = [], []
        for item in self._pending:
            if item.key == key and len(batch) < self.max_batch and not item.future.done():
                batch.append(item)
            elif not item.future.done():
                rest.append(item)
        self._pending = rest
        return batch
