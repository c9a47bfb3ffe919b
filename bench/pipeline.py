"""Throughput of Percept end to end in its multi-process mode, beside the raw engine in the same run.

`.venv/bin/python -m bench.pipeline [--quick]` prints one JSON object (about 4 minutes on 2 cores; --quick
about 2). For each model: the engine alone (bench.raw), then gateway + consumer + RabbitMQ + SQLite driven by
a closed-loop HTTP client at several concurrencies, JSON/base64 and multipart uploads, each measured after a
warm-up; then the busiest setting again with two consumers. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import aiohttp

from bench.client import Body, Form, Percept, inference_bodies
from bench.cluster import KEY, Cluster
from bench.images import HEIGHT, WIDTH, sample_jpegs
from bench.load import percentiles, run_load
from bench.models import MODELS
from bench.probes import snapshot, usage
from percept.settings import Settings

CPUS = os.cpu_count() or 1
CONCURRENCIES = (1, 8, 32, 64)
DEFAULT_CACHE = Path("data/bench-models")  # data/ is Percept's own default data folder, ignored by git


@dataclass(frozen=True)
class Plan:
    requests: int  # measured round trips per setting
    raw_seconds: float  # measuring time per raw-engine figure
    min_warm_up: int  # warm-up round trips per setting: max(this, 2 x concurrency)

    def warm_up(self, concurrency: int) -> int:
        return max(self.min_warm_up, 2 * concurrency)


FULL = Plan(requests=320, raw_seconds=3.0, min_warm_up=16)
QUICK = Plan(requests=96, raw_seconds=0.5, min_warm_up=8)


def raw_engine(
    cache: Path, plan: Plan, tf_env: dict[str, str], models: Sequence[str] | None = None
) -> dict[str, Any]:
    """bench.raw in a child process: every model's figures, or only those of `models`."""
    chosen = ["--models", ",".join(models)] if models is not None else []
    done = subprocess.run(
        [sys.executable, "-m", "bench.raw", str(cache), str(plan.raw_seconds), *chosen],
        env={**os.environ, **tf_env, "TF_CPP_MIN_LOG_LEVEL": "2"},
        stdout=subprocess.PIPE,
        check=True,
    )
    raw: dict[str, Any] = json.loads(done.stdout)
    return raw


async def _measure(
    session: aiohttp.ClientSession,
    cluster: Cluster,
    percept: Percept,
    version_id: str,
    bodies: list[Body],
    *,
    concurrency: int,
    plan: Plan,
    raw_best: float,
) -> dict[str, Any]:
    """One setting: warm up (model loads, connection pools, queues filling), then measure."""
    send = functools.partial(percept.infer_ok, version_id)
    await run_load(send, bodies, concurrency=concurrency, requests=plan.warm_up(concurrency))
    before = await snapshot(session, cluster.pids(), cluster.consumer_metrics_urls)
    load = await run_load(send, bodies, concurrency=concurrency, requests=plan.requests)
    after = await snapshot(session, cluster.pids(), cluster.consumer_metrics_urls)
    done = len(load.latencies_ms)
    rate = done / load.elapsed_s
    return {
        "images_per_s": round(rate, 1),
        "ratio_to_raw_best": round(rate / raw_best, 3),
        "latency": percentiles(load.latencies_ms),
        "errors": load.errors,
        **({"first_error": load.first_error} if load.first_error else {}),
        **usage(before, after, images=done, elapsed_s=load.elapsed_s),
    }


def client_session() -> aiohttp.ClientSession:
    # No pool limit: the number of clients is the concurrency. Long polls hold a connection up to 30 s.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
    )


async def _one_consumer(
    cluster: Cluster, cache: Path, raw: dict[str, Any], jpegs: list[bytes], plan: Plan
) -> tuple[dict[str, Any], dict[str, str]]:
    """Every model, form and concurrency; and the version id of each model, for the next round."""
    results: dict[str, Any] = {}
    versions: dict[str, str] = {}
    async with client_session() as session:
        percept = Percept(session, cluster.url, KEY)
        for model in MODELS:
            versions[model.key] = await percept.deploy(model, model.folder(cache))
            results[model.key] = {}
            for form in Form:
                bodies = inference_bodies(jpegs, form)
                results[model.key][form.value] = {
                    str(concurrency): await _measure(
                        session,
                        cluster,
                        percept,
                        versions[model.key],
                        bodies,
                        concurrency=concurrency,
                        plan=plan,
                        raw_best=raw[model.key]["best_images_per_s"],
                    )
                    for concurrency in CONCURRENCIES
                }
    return results, versions


def _busiest(levels: dict[str, dict[str, Any]]) -> tuple[Form, int]:
    """The form and concurrency with the most images/s."""
    rates = {
        (Form(form), int(concurrency)): result["images_per_s"]
        for form, by_concurrency in levels.items()
        for concurrency, result in by_concurrency.items()
    }
    return max(rates, key=lambda setting: rates[setting])


async def _two_consumers(
    cluster: Cluster,
    raw: dict[str, Any],
    jpegs: list[bytes],
    plan: Plan,
    one: dict[str, Any],
    versions: dict[str, str],
) -> dict[str, Any]:
    results = {}
    async with client_session() as session:
        percept = Percept(session, cluster.url, KEY)
        for model in MODELS:
            form, concurrency = _busiest(one[model.key])
            measured = await _measure(
                session,
                cluster,
                percept,
                versions[model.key],
                inference_bodies(jpegs, form),
                concurrency=concurrency,
                plan=plan,
                raw_best=raw[model.key]["best_images_per_s"],
            )
            results[model.key] = {"form": form.value, "concurrency": concurrency, **measured}
    return results


def terminate(_signal: int, _frame: object) -> NoReturn:
    # SystemExit unwinds through every `with`, so the cluster is stopped as on Ctrl-C.
    raise SystemExit(128 + signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per setting (about 2 minutes)")
    parser.add_argument("--max-batch-size", type=int, default=Settings.model_fields["max_batch_size"].default)
    parser.add_argument(
        "--max-batch-delay-ms", type=float, default=Settings.model_fields["max_batch_delay_ms"].default
    )
    parser.add_argument("--no-two-consumers", action="store_true", help="skip the two-consumer measurement")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the models are built once")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, terminate)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    settings = {
        "PERCEPT_MAX_BATCH_SIZE": str(args.max_batch_size),
        "PERCEPT_MAX_BATCH_DELAY_MS": str(args.max_batch_delay_ms),
        "PERCEPT_PREFETCH": str(Settings.model_fields["prefetch"].default),
    }
    # TensorFlow reads these at start (Percept does not set them): one consumer gets every core.
    threads_one, threads_two = CPUS, max(1, CPUS // 2)
    args.cache.mkdir(parents=True, exist_ok=True)
    raw = raw_engine(args.cache, plan, {"TF_NUM_INTRAOP_THREADS": str(threads_one)})
    jpegs = sample_jpegs()
    mean_kib = sum(map(len, jpegs)) // len(jpegs) // 1024
    report: dict[str, Any] = {
        "benchmark": "percept pipeline throughput",
        "weights": "random (no model hub here): speed is the architecture's, predictions are noise",
        "cpus": CPUS,
        # Other work on the machine skews every figure: compare with each setting's cpu_busy.
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "plan": {
            "requests_per_setting": plan.requests,
            "warm_up_per_setting": f"max({plan.min_warm_up}, 2 x concurrency)",
            "images": f"{len(jpegs)} JPEGs {WIDTH}x{HEIGHT}, {mean_kib} KiB mean",
            "latency": "submit -> result seen by long-poll GET /v0.7/tasks/{id}/?wait=30",
        },
        "settings": {
            **settings,
            "consumers": 1,
            "TF_NUM_INTRAOP_THREADS": threads_one,
            "two_consumers_TF_NUM_INTRAOP_THREADS": threads_two,
            "broker": "PERCEPT_TEST_AMQP_URL"
            if os.environ.get("PERCEPT_TEST_AMQP_URL")
            else "rabbitmq on loopback",
            "store": "sqlite",
        },
    }
    with (
        tempfile.TemporaryDirectory(prefix="percept-bench-") as scratch,
        Cluster(Path(scratch), settings) as cluster,
    ):
        cluster.start_consumers(1, tf_threads=threads_one)
        one, versions = asyncio.run(_one_consumer(cluster, args.cache, raw, jpegs, plan))
        two = None
        if not args.no_two_consumers:
            cluster.start_consumers(2, tf_threads=threads_two)
            two = asyncio.run(_two_consumers(cluster, raw, jpegs, plan, one, versions))
    report["models"] = {
        model.key: {
            "raw_engine": raw[model.key],
            "end_to_end": one[model.key],
            **({"two_consumers": two[model.key]} if two else {}),
        }
        for model in MODELS
    }
    report["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
