"""Deepomatic tasks: one task, or many by repeated (or comma-separated) `task_ids`.

Both forms take `?wait=SECONDS` (a Percept extension, at most MAX_WAIT_S): the answer comes as soon as every
task asked for has finished, or when the wait runs out, with the tasks as they are then.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from aiohttp import web

from gateway import render
from gateway.context import STORE, WAITERS, owner_of
from gateway.errors import InvalidInput, NotFound
from gateway.pagination import page_body, page_params
from gateway.routes.common import add, ok, path_id
from schemas.documents import TaskDoc, TaskStatus
from store.port import TASKS

MAX_TASK_IDS = 1000
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


async def retrieve_task(request: web.Request) -> web.Response:
    task_id = path_id(request)
    docs = await read_tasks(request, [task_id], wait=wait_param(request))
    if not docs:
        raise NotFound(f"task {task_id} does not exist", field="task_id")
    return ok(render.task(docs[0]))


async def list_tasks(request: web.Request) -> web.Response:
    ids = [
        part.strip()
        for value in request.query.getall("task_ids", [])
        for part in value.split(",")
        if part.strip()
    ]
    if not ids:
        raise InvalidInput("give the tasks to list: ?task_ids=1&task_ids=2", field="task_ids")
    if len(ids) > MAX_TASK_IDS:
        raise InvalidInput(f"at most {MAX_TASK_IDS} ids per request", field="task_ids")
    wait = wait_param(request)
    offset, limit = page_params(request)
    unique = list(dict.fromkeys(ids))
    # A wait covers the tasks of the page asked for: the others are not in this answer.
    docs = await read_tasks(request, unique[offset : offset + limit], wait=wait)
    results = [render.task(doc) for doc in docs]
    return ok(page_body(request, count=len(unique), offset=offset, limit=limit, results=results))


def setup(app: web.Application) -> None:
    add(app, "GET", "/v0.7/tasks/", list_tasks)
    add(app, "GET", "/v0.7/tasks/{id}/", retrieve_task)
