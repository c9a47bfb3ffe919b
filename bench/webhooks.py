"""Webhook delivery latency: task end → signed delivery received by a fast loopback receiver, while a slow
receiver (answers only after the webhook timeout) is registered for the same events.

`.venv/bin/python -m bench.webhooks [--tasks 300] [--rate 3]` prints one JSON object (about 1-2 minutes).
It runs the multi-process mode: RabbitMQ on loopback (started here unless PERCEPT_TEST_AMQP_URL names one),
`percept gateway`, one `percept consumer` and one SQLite file (bench.cluster); both receivers run in this
process. The task end is the task's `date_updated` (stamped by the consumer when it stores the result); the
receipt is this process's clock when the fast receiver reads the request: one machine, one clock. Each fast
delivery's signature is checked with the reference `standardwebhooks` library after the run.

Each event costs the slow receiver 1 + retries attempts, each holding one of the consumer's webhook slots
for the whole timeout. Without a per-endpoint cap the slots sustain about webhook_prefetch / (attempts x
timeout) events per second, and past that the fast receiver's deliveries queue behind the slow one's
timeouts; with it, the slow endpoint holds its share of the slots and the rest serve the fast one.
`--max-in-flight-per-endpoint 16 --circuit-failures 0` gives the slow endpoint every slot, as before the
cap existed. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from standardwebhooks import Webhook

from bench.client import Body, Percept, RequestFailed
from bench.cluster import KEY, Cluster
from bench.images import sample_jpegs
from bench.load import percentiles
from bench.models import MODELS, ensure_built
from bench.pipeline import DEFAULT_CACHE
from consumers.config import ConsumerConfig
from tests.rabbitmq import free_port

TIMEOUT_S = 1.0  # PERCEPT_WEBHOOK_TIMEOUT_S: the slow receiver answers after it, so every attempt fails
SLOW_EXTRA_S = 1.0  # how far past the timeout the slow receiver sleeps
RETRY_SCHEDULE = "1,2,4"  # short, so the slow receiver's retries also compete during the run
CONCURRENCY = 8  # tasks in flight from the load generator
DELIVERY_WAIT_S = 120.0  # bound on waiting for the last fast delivery


@dataclass
class Receiver:
    delay_s: float = 0.0
    received: list[tuple[float, bytes, dict[str, str]]] = field(default_factory=list)
    all_in: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((time.time(), body, dict(request.headers)))
        if self.expected and len(self.received) >= self.expected:
            self.all_in.set()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(status=200)


async def _serve(receiver: Receiver) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook"


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def _endpoint(session: aiohttp.ClientSession, url: str, hook_url: str) -> dict[str, Any]:
    async with session.post(
        f"{url}/v0.7/webhooks/",
        json={"url": hook_url, "events": ["task.succeeded"]},
        headers={"X-API-KEY": KEY},
    ) as response:
        if response.status != 201:
            raise RequestFailed(f"POST /v0.7/webhooks/: {response.status} {await response.text()}")
        endpoint: dict[str, Any] = await response.json()
        return endpoint


async def _run(cluster: Cluster, cache: Path, tasks: int, rate: float) -> dict[str, Any]:
    fast, slow = Receiver(expected=tasks), Receiver(delay_s=TIMEOUT_S + SLOW_EXTRA_S)
    fast_runner, fast_url = await _serve(fast)
    slow_runner, slow_url = await _serve(slow)
    model = next(m for m in MODELS if m.key == "tiny")
    jpeg = sample_jpegs()[0]
    body = Body(
        json.dumps({"inputs": [{"image": {"source": base64.b64encode(jpeg).decode()}}]}).encode(),
        "application/json",
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            percept = Percept(session, cluster.url, KEY)
            version_id = await percept.deploy(model, ensure_built(model, cache))
            fast_endpoint = await _endpoint(session, cluster.url, fast_url)
            await _endpoint(session, cluster.url, slow_url)
            # The slow one is registered second: the deliveries of one event leave in registration order.
            ended: dict[str, float] = {}

            async def one() -> None:
                task = await percept.infer(version_id, body)
                if task["status"] != "success":
                    raise RequestFailed(f"task {task['id']}: {task['error']}")
                ended[task["id"]] = _epoch(task["date_updated"])

            started = time.perf_counter()
            if rate:
                # Open loop: task i is submitted at i / rate seconds, however the earlier ones fare.
                running = []
                for index in range(tasks):
                    await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
                    running.append(asyncio.create_task(one()))
                await asyncio.gather(*running)
            else:
                pending = iter(range(tasks))

                async def client() -> None:
                    for _ in pending:
                        await one()

                await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
            load_s = time.perf_counter() - started
            with contextlib.suppress(TimeoutError):  # whatever arrived is reported as delivered
                await asyncio.wait_for(fast.all_in.wait(), DELIVERY_WAIT_S)
            slow_attempts_during_run = len(slow.received)
    finally:
        await fast_runner.cleanup()
        await slow_runner.cleanup()

    verifier = Webhook(fast_endpoint["secret"])
    latencies: list[float] = []
    unverified = 0
    seen: set[str] = set()
    for received_at, raw, headers in fast.received:
        try:
            payload = verifier.verify(raw, headers)
        except Exception:  # the reference library raises its own error types
            unverified += 1
            continue
        task_id = payload["data"]["id"]
        if task_id in ended and task_id not in seen:
            seen.add(task_id)
            latencies.append((received_at - ended[task_id]) * 1000)
    figures = percentiles(latencies)
    return {
        "tasks": tasks,
        "submission": f"{rate:g} tasks/s, open loop" if rate else f"closed loop, {CONCURRENCY} in flight",
        "load_seconds": round(load_s, 2),
        "fast_receiver": {
            "delivered": len(seen),
            "duplicates": len(fast.received) - len(seen) - unverified,
            "signature_failures": unverified,
            "task_end_to_received": {
                "p50_ms": figures["p50_ms"],
                "p99_ms": figures["p99_ms"],
                "max_ms": round(max(latencies), 1) if latencies else None,
            },
        },
        "slow_receiver": {
            "answers_after_s": TIMEOUT_S + SLOW_EXTRA_S,
            "attempts_received": slow_attempts_during_run,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300, help="inference tasks, each firing both webhooks")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="tasks per second, open loop; 0: as fast as 8 clients go"
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the models are built once")
    parser.add_argument(
        "--max-in-flight-per-endpoint",
        type=int,
        default=None,
        help="PERCEPT_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT (default: Percept's); 16: one endpoint, every slot",
    )
    parser.add_argument(
        "--circuit-failures",
        type=int,
        default=None,
        help="PERCEPT_WEBHOOK_CIRCUIT_FAILURES (default: Percept's); 0 never cuts an endpoint off",
    )
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    settings = {
        "PERCEPT_OUTBOUND_ALLOW": "127.0.0.1/32",
        "PERCEPT_WEBHOOK_TIMEOUT_S": str(TIMEOUT_S),
        "PERCEPT_WEBHOOK_RETRY_SCHEDULE": RETRY_SCHEDULE,
        "PERCEPT_LOG_LEVEL": "warning",
    }
    if args.max_in_flight_per_endpoint is not None:
        settings["PERCEPT_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT"] = str(args.max_in_flight_per_endpoint)
    if args.circuit_failures is not None:
        settings["PERCEPT_WEBHOOK_CIRCUIT_FAILURES"] = str(args.circuit_failures)
    defaults = ConsumerConfig(cache_dir=Path("."))
    report: dict[str, Any] = {
        "benchmark": "webhook delivery latency, fast receiver beside a slow one",
        "mode": "multi-process: percept gateway + 1 percept consumer, RabbitMQ on loopback, SQLite",
        "cpus": os.cpu_count(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "settings": {
            "webhook_prefetch": defaults.webhook_prefetch,
            "webhook_max_in_flight_per_endpoint": defaults.webhook_endpoint_in_flight,
            "webhook_circuit_failures": defaults.webhook_circuit_failures,
            "webhook_circuit_open_s": defaults.webhook_circuit_open_s,
            **settings,
            "model": "tiny",
        },
    }
    with (
        tempfile.TemporaryDirectory(prefix="percept-bench-") as scratch,
        Cluster(Path(scratch), settings) as cluster,
    ):
        cluster.start_consumers(1, tf_threads=os.cpu_count() or 1)
        report |= asyncio.run(_run(cluster, args.cache, args.tasks, args.rate))
    report["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
