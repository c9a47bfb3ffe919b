"""Long polls: requests waiting for tasks to finish, woken by the broker's task events, never by a timer loop.

One event subscription per gateway process feeds a registry from task id to the waits that need it. Events
are hints: a request always answers from the store, and a lost event only means it answers at its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Iterable, Iterator

import structlog
from aiohttp import web
from pydantic import ValidationError

from broker.port import Broker, BrokerError
from schemas.messages import TaskEvent

log = structlog.get_logger("gateway")


class TaskWait:
    """One request's wait: over once every task it names has finished, or when released."""

    def __init__(self, task_ids: Iterable[str]) -> None:
        self.remaining = set(task_ids)
        self._over = asyncio.Event()
        if not self.remaining:
            self._over.set()

    def finished(self, task_id: str) -> None:
        self.remaining.discard(task_id)
        if not self.remaining:
            self._over.set()

    def release(self) -> None:
        self._over.set()

    async def until_over(self, deadline: float) -> None:
        """Returns when the wait is over or at `deadline` (event loop time), whichever comes first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._over.wait()


class TaskWaiters:
    def __init__(self) -> None:
        self._waits: dict[str, set[TaskWait]] = {}
        self._closing = False

    @contextlib.contextmanager
    def watch(self, task_ids: Collection[str]) -> Iterator[TaskWait]:
        """Registers a wait for the tasks; register before reading them, so no event can fall in between."""
        wait = TaskWait(task_ids)
        if self._closing:
            wait.release()
        for task_id in wait.remaining:
            self._waits.setdefault(task_id, set()).add(wait)
        try:
            yield wait
        finally:
            for task_id in task_ids:
                waits = self._waits.get(task_id)
                if waits is not None:
                    waits.discard(wait)
                    if not waits:
                        del self._waits[task_id]

    def finished(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            for wait in self._waits.pop(task_id, ()):
                wait.finished(task_id)

    def release_all(self) -> None:
        """On shutdown: every long poll answers now with what it has, instead of holding the server up."""
        self._closing = True
        for waits in self._waits.values():
            for wait in waits:
                wait.release()

    async def on_event(self, body: bytes) -> None:
        try:
            event = TaskEvent.model_validate_json(body)
        except ValidationError as error:
            log.warning("task_event_invalid", error=str(error))
            return
        self.finished(event.task_ids)


def follow_task_events(app: web.Application, broker: Broker, waiters: TaskWaiters) -> None:
    """Subscribes for the application's lifetime and releases every wait when it shuts down."""

    async def subscription(_app: web.Application) -> AsyncIterator[None]:
        try:
            subscribed = await broker.subscribe_events(waiters.on_event)
        except BrokerError as error:
            # Serving without events is better than not serving: long polls then end at their deadline.
            log.warning("task_events_unavailable", error=str(error))
            yield
            return
        yield
        await subscribed.cancel()

    async def release(_app: web.Application) -> None:
        # on_shutdown runs before aiohttp waits for in-flight requests, which long polls would hold up.
        waiters.release_all()

    app.cleanup_ctx.append(subscription)
    app.on_shutdown.append(release)
