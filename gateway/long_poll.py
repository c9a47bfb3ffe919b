"""Long polls on tasks (`?wait=SECONDS`, a Percept extension): the answer comes as soon as every task asked
for has finished, or when the wait runs out, with the tasks as they are then. Task reads take it, and so do
inference submissions, which then answer with the finished task: one request instead of a submit and a poll.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from aiohttp import web

from gateway.context import STORE, WAITERS, owner_of
from gateway.errors import InvalidInput
from schemas.documents import TaskDoc, TaskStatus
from store.port import TASKS

MAX_WAIT_S = 60.0  # the official client's own default timeout for one task


def wait_param(request: web.Request) -> float:
    """Seconds to wait for the tasks to finish; 0 (the default) answers at once."""
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidInput(f"must be a number of seconds, got {raw!r}", field="wait") from None
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_WAIT_S):
        raise InvalidInput(f"must be between 0 and {MAX_WAIT_S:g} seconds, got {raw!r}", field="wait")
    return seconds


async def read_tasks(request: web.Request, ids: Sequence[str], *, wait: float) -> list[TaskDoc]:
    """The caller's tasks among `ids`, in order; with a wait, once all are terminal or the wait ran out."""
    store, owners = request.app[STORE], [owner_of(request)]
    if not wait:
        return await store.get_many(TASKS, ids, owners=owners)
    deadline = asyncio.get_running_loop().time() + wait
    # Registered before the first read, so a task finishing between that read and the wait is not missed.
    with request.app[WAITERS].watch(ids) as waiting:
        docs = await store.get_many(TASKS, ids, owners=owners)
        pending = {doc.id for doc in docs if doc.status is TaskStatus.PENDING}
        if not pending:
            return docs
        # Terminal, unknown and foreign ids would never be announced: the wait is for the pending ones only.
        for task_id in set(ids) - pending:
            waiting.finished(task_id)
        await waiting.until_over(deadline)
    return await store.get_many(TASKS, ids, owners=owners)
