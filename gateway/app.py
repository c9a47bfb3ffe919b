"""The gateway's composition: an aiohttp application over a store and a broker it is given."""

from __future__ import annotations

from aiohttp import web

from broker.port import Broker
from gateway.auth import auth_middleware
from gateway.context import BROKER, CONFIG, STORE, WAITERS, GatewayConfig
from gateway.metrics import metrics_middleware, serve_metrics
from gateway.middleware import errors_middleware
from gateway.openapi import serve_openapi
from gateway.routes import (
    accounts,
    batch,
    clarifai,
    contracts,
    health,
    networks,
    projects,
    specs,
    tasks,
    versions,
    webhooks,
)
from gateway.waiters import TaskWaiters, follow_task_events
from store.api_keys import KeyCache
from store.port import Store


def create_app(config: GatewayConfig, *, store: Store, broker: Broker) -> web.Application:
    app = web.Application(
        client_max_size=config.max_request_bytes,
        middlewares=[metrics_middleware, errors_middleware, auth_middleware(KeyCache())],
    )
    app[CONFIG] = config
    app[STORE] = store
    app[BROKER] = broker
    app[WAITERS] = TaskWaiters()
    follow_task_events(app, broker, app[WAITERS])
    app.router.add_get("/openapi.json", serve_openapi)
    app.router.add_get("/metrics", serve_metrics)
    routes = (
        health,
        accounts,
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
