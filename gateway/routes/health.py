"""Liveness and readiness, without authentication."""

from __future__ import annotations

from aiohttp import web

from broker.port import BrokerError
from broker.topology import INFERENCE
from gateway.context import BROKER, STORE
from gateway.routes.common import ok
from store.port import StoreError


async def healthz(_request: web.Request) -> web.Response:
    return ok({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problems = {}
    try:
        await request.app[STORE].ping()
    except StoreError as error:
        problems["store"] = str(error) or type(error).__name__
    try:
        depth = await request.app[BROKER].queue_depth(INFERENCE.name)
    except BrokerError as error:
        problems["broker"] = str(error) or type(error).__name__
        depth = None
    if problems:
        return web.json_response({"status": "unavailable", "problems": problems}, status=503)
    return ok({"status": "ready", "inference_queue_depth": depth})


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
