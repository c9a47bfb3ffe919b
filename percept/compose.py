"""The composition root: build the store, the broker, the gateway and the consumer from the settings."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import structlog
from aiohttp import web

from broker.factory import make_broker
from broker.port import Broker
from consumers.config import ConsumerConfig
from gateway.app import create_app
from gateway.auth import ensure_api_key, new_api_key
from gateway.context import GatewayConfig
from gateway.http_server import GatewayRunner
from percept.settings import Settings, retry_delays
from store.factory import open_store
from store.port import Store

log = structlog.get_logger("percept")


def gateway_config(settings: Settings) -> GatewayConfig:
    return GatewayConfig(
        public_url=settings.public_url,
        max_request_bytes=int(settings.max_request_mb * 1024 * 1024),
        max_inline_image_bytes=int(settings.fetch_max_mb * 1024 * 1024),
        rate_limit_per_s=settings.rate_limit_per_s,
        rate_limit_burst=settings.rate_limit_burst,
        max_inputs=settings.max_inputs,
    )


def consumer_config(settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        cache_dir=settings.data_dir / "model-cache",
        max_batch_size=settings.max_batch_size,
        max_batch_delay_s=settings.max_batch_delay_ms / 1000,
        prefetch=settings.prefetch,
        engine_processes=settings.engine_processes,
        engine_threads=settings.engine_threads,
        batch_prefetch_batches=settings.batch_prefetch_batches,
        max_image_pixels=settings.max_image_pixels,
        fetch_timeout_s=settings.fetch_timeout_s,
        fetch_max_bytes=int(settings.fetch_max_mb * 1024 * 1024),
        outbound_allow=tuple(item.strip() for item in settings.outbound_allow.split(",") if item.strip()),
        model_cache_mb=settings.model_cache_mb,
        sandbox_memory_mb=settings.sandbox_memory_mb,
        sandbox_timeout_s=settings.sandbox_timeout_s,
        deployment_lease_s=settings.deployment_lease_s,
        max_run_s=settings.max_run_s,
        webhook_retry_schedule=retry_delays(settings.webhook_retry_schedule),
        webhook_timeout_s=settings.webhook_timeout_s,
        webhook_max_in_flight_per_endpoint=settings.webhook_max_in_flight_per_endpoint,
        webhook_circuit_failures=settings.webhook_circuit_failures,
        webhook_circuit_open_s=settings.webhook_circuit_open_s,
        retention=retention(settings),
        maintenance_interval_s=settings.maintenance_interval_s,
    )


def retention(settings: Settings) -> timedelta | None:
    return timedelta(days=settings.retention_days) if settings.retention_days else None


@asynccontextmanager
async def connections(settings: Settings) -> AsyncIterator[tuple[Store, Broker]]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    kept = retention(settings)
    store = await open_store(
        settings.store_url, settings.data_dir, retention_s=None if kept is None else int(kept.total_seconds())
    )
    broker = make_broker(settings.broker_url, queue_max_length=settings.queue_max_length)
    try:
        await broker.start()
        yield store, broker
    finally:
        await broker.close()
        await store.close()


async def bootstrap_key(settings: Settings, store: Store, *, create_dev_key: bool) -> None:
    if settings.bootstrap_api_key:
        await ensure_api_key(store, settings.bootstrap_api_key, name="bootstrap")
        return
    if not create_dev_key:
        return
    key_file = settings.data_dir / "dev-api-key"
    if key_file.exists():
        key = key_file.read_text().strip()
        await ensure_api_key(store, key, name="development")
        print(f"Development API key (from {key_file}): {key}", flush=True)
        return
    key = new_api_key()
    await ensure_api_key(store, key, name="development")
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    print(f"Development API key (saved in {key_file}): {key}", flush=True)


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def run_http(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = GatewayRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1]  # port 0 asks for any free port
    print(f"Percept listening on http://{host}:{bound_port}", flush=True)
    return runner


def make_gateway(settings: Settings, store: Store, broker: Broker) -> web.Application:
    return create_app(gateway_config(settings), store=store, broker=broker)
