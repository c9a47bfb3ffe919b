"""`percept serve | gateway | consumer`: the embedded all-in-one, or one role of the distributed mode.

Every engine process imports this module again (multiprocessing re-imports the parent's main module in each
child it starts, the console script's included): it imports only the standard library and structlog up
front, so that replacing a crashed engine does not pay for the settings' import (25 ms of CPU each time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from percept.settings import Settings

log = structlog.get_logger("percept")


def _start_metrics_server(settings: Settings) -> WSGIServer | None:
    """`percept consumer` has no HTTP API to host /metrics, so it gets a port of its own (in a thread)."""
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(settings.metrics_port, addr=settings.host)
    except OSError as error:
        # Consumers on one machine share the default port: those that lose the race run without metrics
        # rather than without consuming.
        log.warning(
            "metrics_port_unavailable",
            port=settings.metrics_port,
            error=str(error),
            hint="give each consumer its own PERCEPT_METRICS_PORT (0: off)",
        )
        return None
    log.info("metrics_listening", url=f"http://{settings.host}:{settings.metrics_port}/metrics")
    return server


async def _serve(settings: Settings, *, http: bool, consume: bool, demo: bool) -> None:
    from percept.compose import bootstrap_key, connections, make_gateway, run_http, wait_for_signal

    async with connections(settings) as (store, broker):
        await bootstrap_key(settings, store, create_dev_key=http and consume)
        if not settings.broker_url:
            from percept.recovery import recover_embedded

            await recover_embedded(store, broker)
        service = None
        if consume:
            from consumers.service import ConsumerService
            from percept.compose import consumer_config

            service = ConsumerService(store, broker, consumer_config(settings))
            await service.start()
        # With HTTP, the gateway's /metrics shows this process's consumer metrics too.
        metrics_server = (
            _start_metrics_server(settings) if consume and not http and settings.metrics_port else None
        )
        gateway_app = make_gateway(settings, store, broker) if http else None
        demo_task = None
        if demo and gateway_app is not None:
            from gateway.context import READINESS
            from percept.demo import start_demo_models

            demo_task = start_demo_models(gateway_app[READINESS], store, broker, settings.data_dir)
        runner = (
            await run_http(gateway_app, settings.host, settings.port) if gateway_app is not None else None
        )
        try:
            await wait_for_signal()
        finally:
            log.info("shutting_down")
            if demo_task is not None:
                demo_task.cancel()
            if runner is not None:
                await runner.cleanup()
            if service is not None:
                await service.stop()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="percept", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "everything in one process: gateway, consumer, demo models (embedded default)"),
        ("gateway", "the HTTP gateway only (needs PERCEPT_BROKER_URL for consumers elsewhere)"),
        ("consumer", "a consumer only: pulls jobs from PERCEPT_BROKER_URL"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--host", help="listen address (PERCEPT_HOST)")
        command.add_argument("--port", type=int, help="listen port (PERCEPT_PORT)")
        command.add_argument("--data-dir", type=Path, help="data folder (PERCEPT_DATA_DIR)")
    return parser


def main(argv: list[str] | None = None) -> None:
    from percept.logs import configure_logging
    from percept.settings import SettingsError, load_settings

    arguments = _parser().parse_args(argv)
    overrides = {
        key: value
        for key, value in (
            ("host", arguments.host),
            ("port", arguments.port),
            ("data_dir", arguments.data_dir),
        )
        if value is not None
    }
    try:
        settings = load_settings(**overrides)
    except SettingsError as error:
        print(f"percept: bad settings: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if arguments.command != "serve" and not settings.broker_url:
        print(
            f"percept: PERCEPT_BROKER_URL is required for `percept {arguments.command}` "
            "(the in-process broker only works inside `percept serve`)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    configure_logging(settings.log_format, settings.log_level)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    roles = {
        "serve": {"http": True, "consume": True, "demo": settings.demo_models},
        "gateway": {"http": True, "consume": False, "demo": False},
        "consumer": {"http": False, "consume": True, "demo": False},
    }[arguments.command]
    import uvloop

    # uvloop: the event loop's own work (sockets, callbacks) costs less CPU per request than asyncio's.
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(settings, **roles))


if __name__ == "__main__":
    main()
