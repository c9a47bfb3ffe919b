"""The gateway's CPU per inference submission, alone: `percept gateway` + RabbitMQ + SQLite, no consumer.

`.venv/bin/python -m bench.gateway_cpu [--requests 500] [--concurrency 8] [--forms json,multipart]
[--profile FILE]` prints one JSON object (about a minute on 2 cores). The gateway runs as its own process,
as in the multi-process mode; the load generator (this process) only submits (POST .../inference, answer
200 with a task id) 640x480 JPEGs to a recognition version, and the figure is the gateway process's CPU
(all its threads, from /proc) over the measured submissions. Nothing consumes the jobs: the queues are
emptied after each form. The version's network is written straight into the store as deployed, so no model
is built or loaded. `--profile FILE` runs the gateway under cProfile (warm-up included) and writes its
stats to FILE on exit (`python -m pstats FILE`); the CPU figures are then inflated by the profiler.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from bench.client import Body, Form, Percept, inference_bodies
from bench.cluster import KEY, Cluster
from bench.images import sample_jpegs
from bench.load import percentiles, run_load
from bench.models import MODELS
from bench.probes import snapshot, usage
from gateway.auth import ensure_api_key
from schemas.documents import NetworkDoc, SpecDoc, VersionDoc
from schemas.networks import Framework, NetworkStatus, Preprocessing
from schemas.specs import SpecOutput
from schemas.versions import PostProcessing
from store.factory import open_store
from store.port import NETWORKS, SPECS, VERSIONS

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")

MODEL = next(
    each for each in MODELS if each.key == "mobilenet_v2"
)  # only its pre-processing and labels matter: nothing runs it


async def seed_version(store_path: Path, data_dir: Path) -> str:
    """A deployed network, a spec and its version, written as the gateway would find them; the version id."""
    store = await open_store(f"sqlite:///{store_path}", data_dir)
    try:
        tenant = await ensure_api_key(store, KEY)
        fields = MODEL.network_fields()
        preprocessing = Preprocessing.model_validate(
            {
                "inputs": [
                    {
                        "tensor_name": fields["preprocessing.inputs[0]tensor_name"],
                        "image": {
                            "target_size": fields["preprocessing.inputs[0]image.target_size"],
                            "pixel_scaling": float(fields["preprocessing.inputs[0]image.pixel_scaling"]),
                        },
                    }
                ]
            }
        )
        network_id, spec_id, version_id = [
            await store.next_id(name) for name in ("networks", "specs", "versions")
        ]
        await store.insert(
            NETWORKS,
            NetworkDoc(
                id=network_id,
                owner=tenant,
                name=fields["name"],
                framework=Framework.TENSORFLOW,
                preprocessing=preprocessing,
                status=NetworkStatus.READY,
                task_id="0",
            ),
        )
        spec = MODEL.spec_body()
        outputs = [SpecOutput.model_validate(output) for output in spec["outputs"]]
        await store.insert(
            SPECS,
            SpecDoc(
                id=spec_id,
                owner=tenant,
                name=spec["name"],
                outputs=outputs,
                current_version_id=int(version_id),
            ),
        )
        post_processings = [PostProcessing.model_validate(each) for each in MODEL.post_processings()]
        await store.insert(
            VERSIONS,
            VersionDoc(
                id=version_id,
                owner=tenant,
                spec_id=spec_id,
                network_id=network_id,
                post_processings=post_processings,
            ),
        )
        return version_id
    finally:
        await store.close()


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far of process `pid`'s main thread and of its other threads (the store's, the
    executor's): how much of the gateway's cost is handed to threads rather than run on the event loop."""
    main = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            spent = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
            if int(task.name) == pid:
                main += spent
            else:
                others += spent
    return {"main_thread": main, "other_threads": others}


async def _measure_form(
    session: aiohttp.ClientSession,
    cluster: Cluster,
    version_id: str,
    bodies: list[Body],
    *,
    concurrency: int,
    requests: int,
    warm_up: int,
) -> dict[str, Any]:
    percept = Percept(session, cluster.url, KEY)

    async def send(body: Body) -> None:
        await percept.submit(version_id, body)

    await run_load(send, bodies, concurrency=concurrency, requests=warm_up)
    gateway = cluster.pids()["gateway"]
    threads_before, before = thread_cpu_seconds(gateway), await snapshot(session, cluster.pids(), [])
    load = await run_load(send, bodies, concurrency=concurrency, requests=requests)
    threads_after, after = thread_cpu_seconds(gateway), await snapshot(session, cluster.pids(), [])
    await cluster.purge_queues()
    spent = usage(before, after, images=requests - load.errors, elapsed_s=load.elapsed_s)
    return {
        "gateway_cpu_ms_per_request": spent.get("cpu_ms_per_image", {}).get("gateway"),
        "gateway_threads_cpu_ms_per_request": {
            name: round(
                (threads_after[name] - threads_before[name]) * 1000 / max(1, requests - load.errors), 2
            )
            for name in threads_after
        },
        "broker_cpu_ms_per_request": spent.get("cpu_ms_per_image", {}).get("broker"),
        "load_generator_cpu_ms_per_request": spent.get("cpu_ms_per_image", {}).get("load_generator"),
        "requests_per_s": round((requests - load.errors) / load.elapsed_s, 1),
        "latency": percentiles(load.latencies_ms),
        "cpu_busy": spent.get("cpu_busy"),
        "errors": load.errors,
        "first_error": load.first_error,
    }


async def _run(arguments: argparse.Namespace, cluster: Cluster, scratch: Path) -> dict[str, Any]:
    jpegs = sample_jpegs()
    version_id = await seed_version(cluster.store_path, scratch / "data")
    results: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        for form in arguments.forms:
            results[form.value] = await _measure_form(
                session,
                cluster,
                version_id,
                inference_bodies(jpegs, form),
                concurrency=arguments.concurrency,
                requests=arguments.requests,
                warm_up=arguments.warm_up,
            )
    return {
        "what": "gateway CPU per inference submission (submit only; nothing consumes)",
        "requests": arguments.requests,
        "concurrency": arguments.concurrency,
        "image_bytes_mean": round(sum(map(len, jpegs)) / len(jpegs)),
        "profiled": arguments.profile is not None,
        "forms": results,
    }


def _forms(text: str) -> list[Form]:
    return [Form(name.strip()) for name in text.split(",") if name.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500, help="measured submissions per form")
    parser.add_argument("--warm-up", type=int, default=50, help="submissions before measuring, per form")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--forms", type=_forms, default=[Form.JSON, Form.MULTIPART], help="json,multipart")
    parser.add_argument("--profile", type=Path, help="run the gateway under cProfile; stats to this file")
    arguments = parser.parse_args()
    if arguments.profile is not None:
        arguments.profile = arguments.profile.resolve()
    with (
        tempfile.TemporaryDirectory(prefix="percept-gwcpu-") as scratch,
        Cluster(
            Path(scratch), {"PERCEPT_LOG_LEVEL": "warning"}, gateway_profile=arguments.profile
        ) as cluster,
    ):
        result = asyncio.run(_run(arguments, cluster, Path(scratch)))
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
