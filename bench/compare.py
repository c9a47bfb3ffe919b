"""Percept beside PyTriton and BentoML and the raw engine, in one run on one machine: images/s and latency.

`.venv/bin/python -m bench.compare [--quick]` (or `make bench-compare`) prints one JSON object; about 7
minutes on 2 cores once the competitors' virtualenvs exist (building them adds about 3 minutes, once).
(a) the raw engine at its best batch size, in one process with a TensorFlow thread per core and in its
best thread layout (a single-threaded process per core), measured before and after the servers; (b)
Percept's multi-process mode (gateway + one consumer + RabbitMQ + SQLite): multipart and base64-JSON
uploads, submit -> result by long poll, and multipart submitted with `?wait=` (one request per image); (c)
the same SavedModels served by PyTriton and by BentoML, each decoding, pre-processing, predicting and
ranking under its own dynamic batching. Every system gets the same JPEGs from the same closed-loop load
generator at each concurrency, the systems taking turns at each level. How to read the output:
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.client import Body, Form, Percept, inference_bodies
from bench.cluster import KEY, Cluster
from bench.competitors import servers
from bench.competitors.clients import Bento, Triton, bento_body, kserve_body
from bench.images import HEIGHT, WIDTH, sample_jpegs
from bench.load import Send, percentiles, run_load
from bench.models import MODELS, BenchModel
from bench.pipeline import DEFAULT_CACHE, Plan, client_session, raw_engine, terminate
from bench.probes import CONSUMER_SUMS, Snapshot, machine_ticks, own_cpu_seconds, snapshot, usage
from percept.settings import Settings

CPUS = os.cpu_count() or 1
CONCURRENCIES = (1, 8, 32, 64)
LATENCY_AT = (1, 32)  # the concurrencies whose latency percentiles the summary shows
CPU_AT = 32  # the concurrency whose CPU per image the summary shows
SYSTEMS = ("percept_multipart", "percept_json", "percept_wait", "triton", "bentoml")

FULL = Plan(requests=256, raw_seconds=2.0, min_warm_up=16)
QUICK = Plan(requests=64, raw_seconds=0.5, min_warm_up=8)


@dataclass(frozen=True)
class Target:
    """One system as the load generator sees it: how to send one image of a model, and what to read."""

    name: str
    bodies: list[Body]
    send: Callable[[BenchModel], Send]
    probe: Callable[[], Awaitable[Snapshot]]


async def measure_setting(target: Target, model: BenchModel, concurrency: int, plan: Plan) -> dict[str, Any]:
    send = target.send(model)
    # Warm-up: a model's first batches trace, pools and queues fill; no figure includes them.
    await run_load(send, target.bodies, concurrency=concurrency, requests=plan.warm_up(concurrency))
    before = await target.probe()
    load = await run_load(send, target.bodies, concurrency=concurrency, requests=plan.requests)
    after = await target.probe()
    done = len(load.latencies_ms)
    measured = usage(before, after, images=done, elapsed_s=load.elapsed_s)
    if not target.name.startswith("percept"):
        # Only CPU and machine figures: the consumer metrics are Percept's own.
        measured = {key: measured[key] for key in ("cpu_ms_per_image", "cpu_busy") if key in measured}
        measured.get("cpu_ms_per_image", {}).pop("consumers_total", None)
    return {
        "images_per_s": round(done / load.elapsed_s, 1),
        "latency": percentiles(load.latencies_ms),
        "errors": load.errors,
        **({"first_error": load.first_error} if load.first_error else {}),
        **measured,
    }


def _percept_targets(
    session: aiohttp.ClientSession, cluster: Cluster, versions: dict[str, str], jpegs: list[bytes]
) -> list[Target]:
    percept = Percept(session, cluster.url, KEY)

    def send(model: BenchModel) -> Send:
        return functools.partial(percept.infer_ok, versions[model.key])

    def send_waiting(model: BenchModel) -> Send:
        return functools.partial(percept.infer_waiting_ok, versions[model.key])

    async def probe() -> Snapshot:
        return await snapshot(session, cluster.pids(), cluster.consumer_metrics_urls)

    return [
        Target("percept_multipart", inference_bodies(jpegs, Form.MULTIPART), send, probe),
        Target("percept_json", inference_bodies(jpegs, Form.JSON), send, probe),
        # Multipart, one request per image: `?wait=` answers with the finished task.
        Target("percept_wait", inference_bodies(jpegs, Form.MULTIPART), send_waiting, probe),
    ]


def _server_probe(server: servers.Server) -> Callable[[], Awaitable[Snapshot]]:
    async def probe() -> Snapshot:
        cpu = {"server": server.cpu_seconds(), "load_generator": own_cpu_seconds()}
        return Snapshot(cpu, dict.fromkeys(CONSUMER_SUMS, 0.0), machine_ticks())

    return probe


def competitor_target(session: aiohttp.ClientSession, server: servers.Server, jpegs: list[bytes]) -> Target:
    if server.name == "triton":
        triton = Triton(session, server.url)
        bodies, infer = [kserve_body(jpeg) for jpeg in jpegs], triton.infer
    else:
        bento = Bento(session, server.url)
        bodies, infer = [bento_body(jpeg) for jpeg in jpegs], bento.infer
    return Target(
        server.name, bodies, lambda model: functools.partial(infer, model.key), _server_probe(server)
    )


async def _run(
    targets: list[Target], models: Sequence[BenchModel], concurrencies: Sequence[int], plan: Plan
) -> dict[str, dict[str, dict[str, Any]]]:
    """results[model][system][concurrency]. At each level the systems take turns, starting one later each
    time, so that drift in the machine's other load does not always fall on the same system."""
    results: dict[str, dict[str, dict[str, Any]]] = {
        model.key: {target.name: {} for target in targets} for model in models
    }
    for model in models:
        for turn, concurrency in enumerate(concurrencies):
            shift = turn % len(targets)
            for target in targets[shift:] + targets[:shift]:
                results[model.key][target.name][str(concurrency)] = await measure_setting(
                    target, model, concurrency, plan
                )
    return results


def _summary(
    raw_best: float, raw_best_layout: float, raw_cpu_ms: float, by_system: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The figures the issue asks for, per system: images/s and ratio to the raw engine at each concurrency
    (to the engine in one process with every core's threads, and to its best thread layout), latency
    percentiles at LATENCY_AT, CPU ms per image at CPU_AT, also as a multiple of the engine's."""
    summary: dict[str, Any] = {}
    for system, levels in by_system.items():
        rates = {level: result["images_per_s"] for level, result in levels.items()}
        best_level = max(rates, key=lambda level: rates[level])
        cpu = levels.get(str(CPU_AT), {}).get("cpu_ms_per_image", {})
        if system.startswith("percept"):
            server_cpu = {role: cpu[role] for role in ("gateway", "consumer-0", "broker") if role in cpu}
            server_cpu["total"] = round(sum(server_cpu.values()), 2)
        else:
            server_cpu = {"total": cpu.get("server")}
        summary[system] = {
            "images_per_s": rates,
            "ratio_to_raw": {level: round(rate / raw_best, 3) for level, rate in rates.items()},
            "ratio_to_best_layout": {
                level: round(rate / raw_best_layout, 3) for level, rate in rates.items()
            },
            "best": {
                "concurrency": int(best_level),
                "ratio_to_raw": round(rates[best_level] / raw_best, 3),
                "ratio_to_best_layout": round(rates[best_level] / raw_best_layout, 3),
            },
            **{
                f"latency_c{level}": levels[str(level)]["latency"]
                for level in LATENCY_AT
                if str(level) in levels
            },
            f"server_cpu_ms_per_image_c{CPU_AT}": server_cpu,
            f"server_cpu_vs_engine_c{CPU_AT}": round(server_cpu["total"] / raw_cpu_ms, 2)
            if server_cpu.get("total")
            else None,
            "errors": sum(result["errors"] for result in levels.values()),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per setting (about 3 minutes)")
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma separated, from " + ", ".join(SYSTEMS)
    )
    parser.add_argument("--models", default=",".join(model.key for model in MODELS))
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCIES)))
    parser.add_argument("--requests", type=int, help="measured round trips per setting (default: the plan's)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the models are built once")
    parser.add_argument(
        "--percept-max-batch-size", type=int, default=Settings.model_fields["max_batch_size"].default
    )
    parser.add_argument(
        "--percept-max-batch-delay-ms",
        type=float,
        default=Settings.model_fields["max_batch_delay_ms"].default,
    )
    defaults_triton, defaults_bento = servers.TritonTuning(), servers.BentoTuning()
    for name, value in asdict(defaults_triton).items():
        parser.add_argument(f"--triton-{name.replace('_', '-')}", type=int, default=value)
    for name, value in asdict(defaults_bento).items():
        parser.add_argument(f"--bento-{name.replace('_', '-')}", type=int, default=value)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, terminate)
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    plan = QUICK if args.quick else FULL
    if args.requests:
        plan = Plan(args.requests, plan.raw_seconds, plan.min_warm_up)
    systems = [system for system in args.systems.split(",") if system]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    models = [model for model in MODELS if model.key in args.models.split(",")]
    concurrencies = [int(level) for level in args.concurrency.split(",")]
    triton_tuning = servers.TritonTuning(
        **{name: getattr(args, f"triton_{name}") for name in asdict(defaults_triton)}
    )
    bento_tuning = servers.BentoTuning(
        **{name: getattr(args, f"bento_{name}") for name in asdict(defaults_bento)}
    )

    competitors = [name for name in ("triton", "bentoml") if name in systems]
    environments = servers.ensure_venvs(competitors) if competitors else {}
    args.cache.mkdir(parents=True, exist_ok=True)
    tf_env = {"TF_NUM_INTRAOP_THREADS": str(CPUS)}
    keys = [model.key for model in models]
    raw_start = raw_engine(args.cache, plan, tf_env, keys)  # also builds the models on first use
    jpegs = sample_jpegs()
    percept_settings = {
        "PERCEPT_MAX_BATCH_SIZE": str(args.percept_max_batch_size),
        "PERCEPT_MAX_BATCH_DELAY_MS": str(args.percept_max_batch_delay_ms),
        "PERCEPT_PREFETCH": str(Settings.model_fields["prefetch"].default),
        # Percept's default layout, as the raw engine's best: one single-threaded engine process per core.
        "PERCEPT_ENGINE_PROCESSES": str(CPUS),
        "PERCEPT_ENGINE_THREADS": "1",
    }
    start_up: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="percept-compare-") as folder, contextlib.ExitStack() as stack:
        scratch = Path(folder)
        cluster = None
        if any(system.startswith("percept") for system in systems):
            began = time.perf_counter()
            cluster = stack.enter_context(Cluster(scratch, percept_settings))
            cluster.start_consumers(1, tf_threads=CPUS)
            start_up["percept"] = round(time.perf_counter() - began, 1)
        running: list[servers.Server] = []
        for name in competitors:
            if environments[name].get("status") == "failed":
                continue
            make = servers.triton if name == "triton" else servers.bentoml
            tuning: Any = triton_tuning if name == "triton" else bento_tuning
            began = time.perf_counter()
            server = make(scratch, models, args.cache, CPUS, tuning)
            try:
                running.append(stack.enter_context(server))
            except servers.ServerError as error:
                environments[name]["error"] = str(error)
                continue
            start_up[name] = round(time.perf_counter() - began, 1)
            if server.attempts > 1:
                start_up[f"{name}_attempts"] = server.attempts

        async def measure_all() -> dict[str, dict[str, dict[str, Any]]]:
            async with client_session() as session:
                targets: list[Target] = []
                if cluster is not None:
                    percept = Percept(session, cluster.url, KEY)
                    versions = {
                        model.key: await percept.deploy(model, model.folder(args.cache)) for model in models
                    }
                    targets += [
                        target
                        for target in _percept_targets(session, cluster, versions, jpegs)
                        if target.name in systems
                    ]
                targets += [competitor_target(session, server, jpegs) for server in running]
                return await _run(targets, models, concurrencies, plan)

        results = asyncio.run(measure_all())
    raw_end = raw_engine(args.cache, plan, tf_env, keys)
    mean_kib = sum(map(len, jpegs)) // len(jpegs) // 1024
    report: dict[str, Any] = {
        "benchmark": "percept vs pytriton vs bentoml",
        "weights": "random (no model hub here): speed is the architecture's, predictions are noise",
        "cpus": CPUS,
        # Other work on the machine skews every figure: compare with each setting's cpu_busy.whole_machine.
        "load_average_1m_at_start": round(load_at_start, 2),
        "plan": {
            "requests_per_setting": plan.requests,
            "warm_up_per_setting": f"max({plan.min_warm_up}, 2 x concurrency)",
            "images": f"{len(jpegs)} JPEGs {WIDTH}x{HEIGHT}, {mean_kib} KiB mean",
            "order": "per model, per concurrency, the systems in turn (rotated one place at each level)",
            "ratio_to_raw": "images/s / the mean of the raw engine's best images/s before and after",
            "ratio_to_best_layout": "images/s / the same mean for the engine's best thread layout "
            "(one process with a thread per core, or a process per core with one thread each)",
            "server_cpu_vs_engine": "serving CPU ms per image / the engine's own (decode + predict)",
        },
        "settings": {
            "TF_NUM_INTRAOP_THREADS": CPUS,
            "percept": {
                **percept_settings,
                "consumers": 1,
                "broker": "rabbitmq on loopback",
                "store": "sqlite",
            },
            "triton": asdict(triton_tuning),
            "bentoml": asdict(bento_tuning),
        },
        "environments": environments,
        "seconds_to_ready": start_up,
        "models": {},
    }
    for model in models:
        start_best = raw_start[model.key]["best_images_per_s"]
        end_best = raw_end[model.key]["best_images_per_s"]
        raw_best = (start_best + end_best) / 2
        raw_best_layout = sum(raw[model.key]["best_layout_images_per_s"] for raw in (raw_start, raw_end)) / 2
        raw_cpu_ms = min(raw[model.key]["engine_cpu_ms_per_image"] for raw in (raw_start, raw_end))
        report["models"][model.key] = {
            "raw_engine": {
                "best_images_per_s": round(raw_best, 1),
                "best_layout_images_per_s": round(raw_best_layout, 1),
                "best_layout": {
                    "before": raw_start[model.key]["best_layout"],
                    "after": raw_end[model.key]["best_layout"],
                },
                "engine_cpu_ms_per_image": raw_cpu_ms,
                "before": raw_start[model.key],
                "after": raw_end[model.key],
            },
            "summary": _summary(raw_best, raw_best_layout, raw_cpu_ms, results[model.key]),
            "details": results[model.key],
        }
    report["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
