"""What handlers find on the application: typed keys, the gateway's own configuration."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from broker.port import Broker
from gateway.readiness import Readiness
from gateway.resolved import ResolvedModels
from gateway.waiters import TaskWaiters
from store.hooks import EndpointPresence
from store.id_blocks import IdBlocks
from store.outbox import OutboxCleaner
from store.port import Store


@dataclass(frozen=True)
class GatewayConfig:
    public_url: str = ""  # base of absolute links; empty: taken from each request
    max_request_bytes: int = 64 * 1024 * 1024
    max_inline_image_bytes: int = 20 * 1024 * 1024
    rate_limit_per_s: float = 0.0  # requests a second per API key, per process; 0: no limit
    rate_limit_burst: int = 0  # requests a key may send at once; 0: one second's worth (at least 1)
    max_inputs: int = 128  # inputs per Deepomatic inference request
    # Task ids reserved per store write (store.id_blocks); a stopped process leaves its block's rest unused.
    task_id_block: int = 100


STORE = web.AppKey("store", Store)
BROKER = web.AppKey("broker", Broker)
CONFIG = web.AppKey("config", GatewayConfig)
WAITERS = web.AppKey("waiters", TaskWaiters)  # long polls on tasks
OUTBOX_CLEANER = web.AppKey("outbox_cleaner", OutboxCleaner)
ENDPOINTS = web.AppKey("endpoints", EndpointPresence)  # does a tenant have webhook endpoints (cached)
RESOLVED = web.AppKey("resolved", ResolvedModels)  # model references of recent submissions
TASK_IDS = web.AppKey("task_ids", IdBlocks)  # ids of the tasks submissions make
READINESS = web.AppKey("readiness", Readiness)  # start-up work /readyz waits for
OWNER = web.RequestKey("owner", str)  # the tenant the API key belongs to


def owner_of(request: web.Request) -> str:
    owner = request.get(OWNER)
    assert isinstance(owner, str), "route is missing the auth middleware"
    return owner
