"""Liveness and readiness, without authentication."""

from __future__ import annotations

from aiohttp import web

from broker.port import BrokerError
from broker.topology import INFERENCE, INFERENCE_QUEUES
from gateway.context import BROKER, READINESS, STORE
from gateway.routes.common import ok
from store.port import StoreError


async def healthz(_request: web.Request) -> web.Response:
    return ok({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the store and the broker answer and no start-up work is pending (gateway.readiness);
    reports every inference queue's depth (interactive and batch), and, as before, the interactive one's
    alone as `inference_queue_depth`."""
    problems = request.app[READINESS].waiting()
    try:
        await request.app[STORE].ping()
    except StoreError as error:
        problems["store"] = str(error) or type(error).__name__
    depths: dict[str, int] = {}
    try:
        for queue in INFERENCE_QUEUES:
            depths[queue.name] = await request.app[BROKER].queue_depth(queue.name)
    except BrokerError as error:
        problems["broker"] = str(error) or type(error).__name__
    if problems:
        return web.json_response({"status": "unavailable", "problems": problems}, status=503)
    return ok({"status": "ready", "inference_queue_depth": depths[INFERENCE.name], "queue_depths": depths})


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
