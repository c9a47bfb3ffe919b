"""Deepomatic tasks: one task, or many by repeated (or comma-separated) `task_ids`.

Both forms take `?wait=SECONDS` (a Percept extension: gateway.long_poll).
"""

from __future__ import annotations

from aiohttp import web

from gateway import render
from gateway.errors import InvalidInput, NotFound
from gateway.long_poll import read_tasks, wait_param
from gateway.pagination import page_body, page_params
from gateway.routes.common import add, ok, path_id

MAX_TASK_IDS = 1000


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
