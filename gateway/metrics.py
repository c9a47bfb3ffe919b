"""Prometheus metrics of the gateway: requests per route, and `/metrics` itself.

Metrics live in prometheus-client's default registry, defined once per process: tests build several apps in
one process, and `percept serve` shows the consumer's metrics on the same page because it is one process.
"""

from __future__ import annotations

import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from broker.port import BrokerError
from broker.topology import INFERENCE_QUEUES
from gateway.context import BROKER

log = structlog.get_logger("gateway")

# Label values must stay few: any other method (clients may send any token) is counted as "OTHER".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of requests no route matched (404, 405)

REQUESTS = Counter(
    "percept_http_requests_total",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "percept_http_request_seconds",
    "Time from receiving a request to its handler returning, by method and route template",
    ["method", "route"],
)
QUEUE_DEPTH = Gauge(
    "percept_queue_depth",
    "Messages ready in a broker queue (not counting unacknowledged ones), read when /metrics is scraped",
    ["queue"],
)


def _route(request: web.Request) -> str:
    # The canonical path of the matched resource (`/v0.7/tasks/{id}/`), never the raw path: ids in labels
    # would make one time series per task.
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def _observe(request: web.Request, status: int, started: float) -> None:
    method = request.method if request.method in _METHODS else "OTHER"
    route = _route(request)
    REQUESTS.labels(method, route, str(status)).inc()
    REQUEST_SECONDS.labels(method, route).observe(time.perf_counter() - started)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost, so that error answers are counted with the status the client receives."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as error:  # redirects, which the errors middleware lets through
        _observe(request, error.status, started)
        raise
    # A request cancelled because its client went away has no status and is not counted.
    _observe(request, response.status, started)
    return response


async def serve_metrics(request: web.Request) -> web.Response:
    for queue in INFERENCE_QUEUES:  # interactive and batch jobs, each under its queue's name
        try:
            QUEUE_DEPTH.labels(queue.name).set(await request.app[BROKER].queue_depth(queue.name))
        except BrokerError as error:
            # NaN rather than the last value: a stale depth would look like a healthy, stuck queue.
            log.warning("queue_depth_unavailable", queue=queue.name, error=str(error))
            QUEUE_DEPTH.labels(queue.name).set(float("nan"))
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(REGISTRY), headers={"Content-Type": content_type})
