"""The queue producers' contract, served without authentication like /openapi.json."""

from __future__ import annotations

from aiohttp import web

from gateway.asyncapi import ASYNCAPI_PATH, SCHEMA_PATH, asyncapi_document, producer_message_schema


async def serve_asyncapi(_request: web.Request) -> web.Response:
    return web.json_response(asyncapi_document())


async def serve_producer_schema(_request: web.Request) -> web.Response:
    return web.json_response(producer_message_schema(), content_type="application/schema+json")


def setup(app: web.Application) -> None:
    app.router.add_get(ASYNCAPI_PATH, serve_asyncapi)
    app.router.add_get(SCHEMA_PATH, serve_producer_schema)
