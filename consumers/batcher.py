"""A small generic batcher: items with the same key share one run.

A batch runs when it reaches `max_size` or its oldest item has waited `max_delay` seconds; with
`flush_when_idle`, a partial batch also runs as soon as no other item is arriving (no one waits for a
delay that brings nothing). At most `max_concurrent` runs are in flight: while the model is busy, items
pile up and the next batch is larger, so batches grow exactly when load does. Woken by events, never by
polling. One future per item; a failed run fails its futures; outputs match inputs one to one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

RunBatch = Callable[[Hashable, Sequence[T]], Awaitable[Sequence[R]]]


@dataclass
class _Pending(Generic[T, R]):
    items: list[T] = field(default_factory=list)
    futures: list[asyncio.Future[R]] = field(default_factory=list)
    oldest: float = 0.0


class Batcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: RunBatch[T, R],
        *,
        max_size: int,
        max_delay: float,
        max_concurrent: int = 1,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._max_concurrent = max_concurrent
        self._run_batch = run_batch
        self._max_size = max_size
        self._max_delay = max_delay
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._pending: dict[Hashable, _Pending[T, R]] = {}
        self._wake = asyncio.Event()
        self._arrivals = 0
        self._runs: set[asyncio.Task[None]] = set()

    def submit(self, key: Hashable, item: T) -> asyncio.Future[R]:
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(oldest=self._clock())
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        pending.items.append(item)
        pending.futures.append(future)
        self._arrivals += 1
        self._wake.set()
        return future

    def _take(self, key: Hashable) -> _Pending[T, R]:
        pending = self._pending.pop(key)
        if len(pending.items) > self._max_size:
            rest = _Pending[T, R](
                items=pending.items[self._max_size :],
                futures=pending.futures[self._max_size :],
                oldest=pending.oldest,
            )
            self._pending[key] = rest
            pending.items = pending.items[: self._max_size]
            pending.futures = pending.futures[: self._max_size]
        return pending

    def _due(self, *, idle: bool) -> tuple[list[Hashable], float | None]:
        """Keys to run now (oldest first), and the seconds until the next deadline otherwise."""
        now = self._clock()
        due: list[Hashable] = []
        next_deadline: float | None = None
        for key, pending in sorted(self._pending.items(), key=lambda entry: entry[1].oldest):
            deadline = pending.oldest + self._max_delay
            if len(pending.items) >= self._max_size or deadline <= now or idle:
                due.append(key)
            else:
                next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
        return due, None if next_deadline is None else max(next_deadline - now, 0.0)

    async def run(self, *, flush_when_idle: bool = True) -> None:
        """Dispatch batches until cancelled. Runs of different keys may overlap; the caller bounds them."""
        while True:
            arrivals = self._arrivals
            # Yield once so that items delivered in the same loop iteration join this batch.
            await asyncio.sleep(0)
            wait: float | None = None
            if len(self._runs) < self._max_concurrent:
                idle = flush_when_idle and arrivals == self._arrivals
                due, wait = self._due(idle=idle)
                if due:
                    self._start(self._take(due[0]), due[0])
                    continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    def _start(self, pending: _Pending[T, R], key: Hashable) -> None:
        task = asyncio.create_task(self._execute(key, pending))
        self._runs.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._runs.discard(task)
        self._wake.set()

    async def _execute(self, key: Hashable, pending: _Pending[T, R]) -> None:
        try:
            results = await self._run_batch(key, pending.items)
            if len(results) != len(pending.items):
                raise RuntimeError(f"batch of {len(pending.items)} returned {len(results)} results")
        except Exception as error:
            for future in pending.futures:
                if not future.done():
                    future.set_exception(error)
            return
        for future, result in zip(pending.futures, results, strict=True):
            if not future.done():
                future.set_result(result)
