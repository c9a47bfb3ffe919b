"""Deepomatic tasks: one task, or many by repeated (or comma-separated) `task_ids`."""

from __future__ import annotations

from aiohttp import web

from gateway import render
from gateway.context import STORE, owner_of
from gateway.errors import InvalidInput, NotFound
from gateway.pagination import page_body, page_params
from gateway.routes.common import add, ok, path_id
from store.port import TASKS

MAX_TASK_IDS = 1000


async def retrieve_task(request: web.Request) -> web.Response:
    task_id = path_id(request)
    doc = await request.app[STORE].get(TASKS, task_id, owners=[owner_of(request)])
    if doc is None:
        raise NotFound(f"task {task_id} does not exist", field="task_id")
    return ok(render.task(doc))


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
    offset, limit = page_params(request)
    unique = list(dict.fromkeys(ids))
    docs = await request.app[STORE].get_many(
        TASKS, unique[offset : offset + limit], owners=[owner_of(request)]
    )
    results = [render.task(doc) for doc in docs]
    return ok(page_body(request, count=len(unique), offset=offset, limit=limit, results=results))


def setup(app: web.Application) -> None:
    add(app, "GET", "/v0.7/tasks/", list_tasks)
    add(app, "GET", "/v0.7/tasks/{id}/", retrieve_task)
