"""The caller's own account (the official client reads `accounts/me/`)."""

from __future__ import annotations

from aiohttp import web

from gateway.context import STORE, owner_of
from gateway.routes.common import add, ok
from store.secrets import account_secret


async def me(request: web.Request) -> web.Response:
    owner = owner_of(request)
    # Signs the webhooks of requests that carry a callback_url (registered endpoints have their own).
    secret = await account_secret(request.app[STORE], owner)
    return ok({"id": owner, "name": owner, "webhook_secret": secret})


def setup(app: web.Application) -> None:
    add(app, "GET", "/v0.7/accounts/me/", me)
