"""The caller's own account (the official client reads `accounts/me/`)."""

from __future__ import annotations

from aiohttp import web

from gateway.context import owner_of
from gateway.routes.common import add, ok


async def me(request: web.Request) -> web.Response:
    return ok({"id": owner_of(request), "name": owner_of(request)})


def setup(app: web.Application) -> None:
    add(app, "GET", "/v0.7/accounts/me/", me)
