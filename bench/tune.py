"""How bench.compare's competitor settings were chosen: each server under a grid of its batching settings
and TensorFlow thread layouts.

`.venv/bin/python -m bench.tune [--system triton|bentoml] [--requests N] [--models mobilenet_v2]
[--concurrency 1,32] [--pick 0,3] [--rounds 2]` prints one JSON object: for each setting, per model and
concurrency, images/s, the server's CPU ms per image, p50 latency and how busy the cores were (ours and the
whole machine's); with `--rounds N` the picked settings are measured N times, taking turns, so drift in the
machine's other load spreads over all of them. About 1 minute a setting for one model at two concurrencies.
The defaults of bench.competitors.servers.TritonTuning / BentoTuning are the best of these on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.compare import competitor_target, measure_setting
from bench.competitors import servers
from bench.images import sample_jpegs
from bench.models import MODELS, BenchModel
from bench.pipeline import DEFAULT_CACHE, Plan, client_session, terminate

CPUS = os.cpu_count() or 1
LEVELS = (1, 8, 32)

TRITON = servers.TritonTuning()
BENTO = servers.BentoTuning()


def _triton(
    *,
    instances: int,
    intra: int,
    inter: int,
    max_batch_size: int = 16,
    max_queue_delay_us: int = 2000,
    decode_threads: int = 1,
) -> servers.TritonTuning:
    return servers.TritonTuning(
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        decode_threads=decode_threads,
        tf_intra_op_threads=intra,
        tf_inter_op_threads=inter,
    )


def _bento(
    *, workers: int, intra: int, inter: int, max_batch_size: int = 16, decode_threads: int = 2
) -> servers.BentoTuning:
    return servers.BentoTuning(
        max_batch_size=max_batch_size,
        max_latency_ms=10000,
        workers=workers,
        decode_threads=decode_threads,
        tf_threads_per_worker=intra,
        tf_inter_op_threads_per_worker=inter,
    )


GRIDS: dict[str, list[Any]] = {
    "triton": [
        replace(TRITON, max_queue_delay_us=0),
        replace(TRITON, max_queue_delay_us=2000),
        replace(TRITON, max_queue_delay_us=10000),
        replace(TRITON, max_queue_delay_us=2000, decode_threads=1),
        replace(TRITON, max_queue_delay_us=2000, instances=2, decode_threads=1),
        replace(TRITON, max_queue_delay_us=2000, instances=2, decode_threads=2),
        replace(TRITON, max_queue_delay_us=0, instances=2, decode_threads=1),
        replace(TRITON, max_queue_delay_us=500, instances=2, decode_threads=1),
        replace(TRITON, max_queue_delay_us=5000, instances=2, decode_threads=1),
        # Thread layouts (9-): the instances are threads of one process, sharing its TensorFlow pools.
        # Written out in full, so that they keep their meaning when TritonTuning's defaults change.
        _triton(instances=2, intra=CPUS, inter=0),
        _triton(instances=2, intra=1, inter=2),
        _triton(instances=2, intra=1, inter=1),
        _triton(instances=1, intra=1, inter=1),
        _triton(instances=3, intra=1, inter=3),
        _triton(instances=2, intra=1, inter=2, max_batch_size=8),
        _triton(instances=2, intra=1, inter=2, max_queue_delay_us=0),
        _triton(instances=2, intra=1, inter=2, decode_threads=2),
    ],
    "bentoml": [
        replace(BENTO, max_latency_ms=10000),
        replace(BENTO, max_latency_ms=1000),
        replace(BENTO, max_latency_ms=10000, decode_threads=1),
        replace(BENTO, max_latency_ms=10000, max_batch_size=32),
        replace(BENTO, max_latency_ms=10000, workers=2, decode_threads=1),
        replace(BENTO, max_latency_ms=10000, workers=2, decode_threads=1, tf_threads_per_worker=1),
        replace(BENTO, max_latency_ms=10000, workers=2, decode_threads=2),
        # Thread layouts (7-): each worker is its own process with its own TensorFlow pools.
        _bento(workers=2, intra=CPUS, inter=0),
        _bento(workers=2, intra=1, inter=1),
        _bento(workers=2, intra=1, inter=1, decode_threads=1),
        _bento(workers=1, intra=1, inter=1),
        _bento(workers=3, intra=1, inter=1, decode_threads=1),
        _bento(workers=2, intra=1, inter=1, max_batch_size=8),
    ],
}


def _one(
    system: str, tuning: Any, models: list[BenchModel], levels: list[int], cache: Path, plan: Plan
) -> dict[str, Any]:
    jpegs = sample_jpegs()
    make = servers.triton if system == "triton" else servers.bentoml
    with tempfile.TemporaryDirectory(prefix="percept-tune-") as folder:
        try:
            with make(Path(folder), models, cache, CPUS, tuning) as server:
                figures = asyncio.run(_measure_server(server, models, levels, jpegs, plan))
                return {"settings": asdict(tuning), **figures}
        except servers.ServerError as error:
            return {"settings": asdict(tuning), "error": str(error)[-1500:]}


async def _measure_server(
    server: servers.Server, models: list[BenchModel], levels: list[int], jpegs: list[bytes], plan: Plan
) -> dict[str, Any]:
    async with client_session() as session:
        target = competitor_target(session, server, jpegs)
        figures: dict[str, Any] = {}
        for model in models:
            by_level = {level: await measure_setting(target, model, level, plan) for level in levels}
            figures[model.key] = {
                f"c{level}": {
                    "images_per_s": result["images_per_s"],
                    "server_cpu_ms_per_image": result.get("cpu_ms_per_image", {}).get("server"),
                    "p50_ms": result["latency"]["p50_ms"],
                    "cpu_busy": result.get("cpu_busy", {}),
                    "errors": result["errors"],
                }
                for level, result in by_level.items()
            }
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(GRIDS), action="append")
    parser.add_argument("--requests", type=int, default=128, help="measured round trips per setting")
    parser.add_argument("--pick", help="comma separated indices into each system's grid (default: all)")
    parser.add_argument("--models", default=",".join(model.key for model in MODELS))
    parser.add_argument("--concurrency", default=",".join(map(str, LEVELS)))
    parser.add_argument("--rounds", type=int, default=1, help="measure every picked setting this many times")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="where bench.compare built the models"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, terminate)
    plan = Plan(requests=args.requests, raw_seconds=0.0, min_warm_up=16)
    systems = args.system or sorted(GRIDS)
    environments = servers.ensure_venvs(systems)

    def grid(system: str) -> list[Any]:
        if not args.pick:
            return GRIDS[system]
        return [
            GRIDS[system][int(index)] for index in args.pick.split(",") if int(index) < len(GRIDS[system])
        ]

    models = [model for model in MODELS if model.key in args.models.split(",")]
    levels = [int(level) for level in args.concurrency.split(",")]
    report: dict[str, Any] = {
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "environments": environments,
    }
    for system in systems:
        # Round after round over the picked settings: each setting's runs spread over the whole time.
        runs: list[list[dict[str, Any]]] = [[] for _ in grid(system)]
        for _ in range(args.rounds):
            for index, tuning in enumerate(grid(system)):
                runs[index].append(_one(system, tuning, models, levels, args.cache, plan))
        report[system] = [found[0] if args.rounds == 1 else found for found in runs]
    report["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
