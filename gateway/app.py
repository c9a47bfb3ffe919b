"""The gateway's composition: an aiohttp application over a store and a broker it is given."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Middleware

from broker.port import Broker
from gateway.auth import KEY_CACHE, auth_middleware
from gateway.context import (
    BROKER,
    CONFIG,
    ENDPOINTS,
    OUTBOX_CLEANER,
    READINESS,
    RESOLVED,
    STORE,
    TASK_IDS,
    WAITERS,
    GatewayConfig,
)
from gateway.metrics import metrics_middleware, serve_metrics
from gateway.middleware import errors_middleware
from gateway.openapi import serve_openapi
from gateway.ratelimit import TokenBuckets, rate_limit_middleware
from gateway.readiness import Readiness
from gateway.resolved import ResolvedModels
from gateway.routes import (
    accounts,
    batch,
    clarifai,
    contracts,
    health,
    keys,
    networks,
    projects,
    specs,
    tasks,
    versions,
    webhooks,
)
from gateway.waiters import TaskWaiters, follow_task_events
from store.api_keys import KeyCache
from store.hooks import EndpointPresence
from store.id_blocks import IdBlocks
from store.outbox import OutboxCleaner
from store.port import Store


def _rate_limit(config: GatewayConfig) -> list[Middleware]:
    if config.rate_limit_per_s <= 0:
        return []
    burst = config.rate_limit_burst or max(1, math.ceil(config.rate_limit_per_s))
    return [rate_limit_middleware(TokenBuckets(config.rate_limit_per_s, burst))]


async def _clean_outbox(app: web.Application) -> AsyncIterator[None]:
    cleaner = app[OUTBOX_CLEANER]
    running = asyncio.create_task(cleaner.run())
    yield
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await cleaner.flush()


def create_app(config: GatewayConfig, *, store: Store, broker: Broker) -> web.Application:
    keys_cache = KeyCache()
    app = web.Application(
        client_max_size=config.max_request_bytes,
        # Errors outside auth and the rate limit, so their refusals are rendered like any other error.
        middlewares=[
            metrics_middleware,
            errors_middleware,
            auth_middleware(keys_cache),
            *_rate_limit(config),
        ],
    )
    app[CONFIG] = config
    app[KEY_CACHE] = keys_cache
    app[STORE] = store
    app[BROKER] = broker
    app[WAITERS] = TaskWaiters()
    follow_task_events(app, broker, app[WAITERS])
    app[OUTBOX_CLEANER] = OutboxCleaner(store)
    app[ENDPOINTS] = EndpointPresence()
    app[RESOLVED] = ResolvedModels()
    app[READINESS] = Readiness()
    app[TASK_IDS] = IdBlocks(store, "tasks", block=config.task_id_block)
    app.cleanup_ctx.append(_clean_outbox)
    app.router.add_get("/openapi.json", serve_openapi)
    app.router.add_get("/metrics", serve_metrics)
    routes = (
        health,
        accounts,
        keys,
        networks,
        specs,
        versions,
        tasks,
        clarifai,
        webhooks,
        contracts,
        projects,
        batch,
    )
    for module in routes:
        module.setup(app)
    return app
