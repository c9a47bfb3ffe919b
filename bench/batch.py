"""Annolab batch job throughput (`POST /v1/infer/batch` over N stored sources of a project) versus the same
N images sent as N single Deepomatic requests, and as multi-input requests: same model, same run; and what a
large job costs everybody else: interactive latency during the job versus idle, and the processes' memory.

`.venv/bin/python -m bench.batch [--images 10000] [--model tiny|mobilenet_v2]` prints one JSON object (about
5-10 minutes at 10,000 with the tiny model). It runs the multi-process mode: RabbitMQ on loopback (started
here unless PERCEPT_TEST_AMQP_URL names one), `percept gateway`, one `percept consumer`, one SQLite file
(bench.cluster).

* idle interactive: `--probes` single requests one after the other on an idle service (latency p50/p99);
* single requests: N `POST /v0.7/recognition/versions/{id}/inference`, one image each (multipart, as the
  official client sends files), `--concurrency` in flight, each waited for by long poll;
* batch job: the N images uploaded beforehand as project sources (not timed), then one batch job, timed from
  the POST to its task's end (long poll on `/v0.7/tasks/{job id}/`, which ends with the job). Meanwhile one
  client sends interactive single requests one after the other (their latency during the job), and the
  gateway's and consumer's resident memory is sampled (peak during the job; VmHWM is the lifetime peak);
* multi-input requests: the N images as JSON requests of up to 128 inputs (base64), 4 in flight.
Images/s is N over the wall time of each. Not part of the test suite.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.client import Body, Form, Percept, RequestFailed, inference_bodies
from bench.cluster import KEY, Cluster
from bench.images import HEIGHT, WIDTH, sample_jpegs
from bench.load import percentiles, run_load
from bench.models import MODELS, BenchModel, ensure_built
from bench.pipeline import DEFAULT_CACHE
from schemas.annolab import CHUNK_SIZE, CHUNKS_AHEAD

WARM_UP = 16  # single requests before measuring: the model is loaded and every path has run once
MAX_INPUTS = 128  # per multi-input request (the default PERCEPT_MAX_INPUTS)
RSS_SAMPLE_S = 0.25
# 10,000 images as 79 requests at once took longer than a publish may to confirm: a few at a time instead.
MULTI_INPUT_IN_FLIGHT = 4


async def _post(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> dict[str, Any]:
    async with session.post(url, headers={"Authorization": f"Api-Key {KEY}"}, **kwargs) as response:
        if response.status not in (200, 201):
            raise RequestFailed(f"POST {url}: {response.status} {(await response.text())[:300]}")
        answer: dict[str, Any] = await response.json()
        return answer


async def _sources(
    session: aiohttp.ClientSession, base: str, project: str, jpegs: list[bytes], n: int
) -> list[int]:
    """Uploads N sources, a few at a time; returns their ids in order."""
    ids: list[int] = [0] * n
    slots = asyncio.Semaphore(16)

    async def upload(index: int) -> None:
        form = aiohttp.FormData()
        form.add_field("file", jpegs[index % len(jpegs)], filename="image.jpg", content_type="image/jpeg")
        async with slots:
            source = await _post(session, f"{base}/v1/projects/{project}/sources", data=form)
        ids[index] = int(source["id"])

    await asyncio.gather(*(upload(index) for index in range(n)))
    return ids


def _memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def _cpu_seconds(roots: Sequence[int]) -> float:
    """User + system CPU of the processes `roots` and all their descendants (the consumer's model engines
    are its children), now. Other programs on the machine do not count: a figure that holds on a loaded
    machine, where wall-clock rates swing with the neighbours."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may hold spaces and parentheses: the fields start after the last ")".
            fields = stat.read_text().rpartition(")")[2].split()
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            ticks[pid] = int(fields[11]) + int(fields[12])  # utime, stime
    wanted = set(roots)
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in wanted} - wanted
        wanted |= children
        grew = bool(children)
    return sum(ticks.get(pid, 0) for pid in wanted) / os.sysconf("SC_CLK_TCK")


async def _sample_rss(pids: dict[str, int], peaks: dict[str, int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for role, pid in pids.items():
            peaks[role] = max(peaks.get(role, 0), _memory_kib(pid)["VmRSS"])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_SAMPLE_S)


async def _probe(percept: Percept, version_id: str, body: Body, stop: asyncio.Event) -> list[float]:
    """Interactive single requests, one after the other, until `stop`: their round trips in ms."""
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        await percept.infer_ok(version_id, body)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def _idle_probe(percept: Percept, version_id: str, body: Body, count: int) -> dict[str, Any]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await percept.infer_ok(version_id, body)
        latencies.append((time.perf_counter() - started) * 1000)
    return {"requests": count, "latency": percentiles(latencies)}


async def _batch_job(
    session: aiohttp.ClientSession,
    percept: Percept,
    base: str,
    model: BenchModel,
    sources: list[int],
    *,
    version_id: str,
    probe_body: Body,
    pids: dict[str, int],
    cpu_pids: Sequence[int],
) -> dict[str, Any]:
    body = {
        "groupName": "bench",
        "projectIdentifier": "bench",
        "modelIdentifier": model.spec_body()["name"],
        "sourceIds": sources,
        "outputLayerIdentifier": f"bench {time.time_ns()}",
    }
    stop = asyncio.Event()
    peaks: dict[str, int] = {}
    sampler = asyncio.create_task(_sample_rss(pids, peaks, stop))
    cpu_before = _cpu_seconds(cpu_pids)
    started = time.perf_counter()
    job = await _post(session, f"{base}/v1/infer/batch", json=body)
    probe = asyncio.create_task(_probe(percept, version_id, probe_body, stop))
    task = await percept.finished(job["inferenceJobId"])
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds(cpu_pids) - cpu_before
    stop.set()
    latencies = await probe
    await sampler
    if task["status"] != "success" or task["data"]["done"] != len(sources):
        raise RequestFailed(f"batch job {job['inferenceJobId']} ended {task['status']}: {task['data']}")
    return {
        "seconds": round(elapsed, 2),
        "images_per_s": round(len(sources) / elapsed, 1),
        # Over the job's images, the interactive probes' CPU included (they run meanwhile).
        "cpu_ms_per_image": round(cpu * 1000 / len(sources), 2),
        "dispatch": f"chunks of {CHUNK_SIZE}, at most {CHUNKS_AHEAD} ahead of the finished ones",
        "interactive_during_job": {"requests": len(latencies), "latency": percentiles(latencies)},
        "peak_rss_mib_during_job": {role: round(kib / 1024, 1) for role, kib in peaks.items()},
        "vm_hwm_mib_at_end": {role: round(_memory_kib(pid)["VmHWM"] / 1024, 1) for role, pid in pids.items()},
    }


async def _single(
    percept: Percept, version_id: str, jpegs: list[bytes], n: int, concurrency: int, pids: Sequence[int]
) -> dict[str, Any]:
    bodies = inference_bodies(jpegs, Form.MULTIPART)
    cpu_before = _cpu_seconds(pids)

    async def send(body: Body) -> None:
        await percept.infer_ok(version_id, body)

    result = await run_load(send, bodies, concurrency=concurrency, requests=n)
    cpu = _cpu_seconds(pids) - cpu_before
    if result.errors:
        raise RequestFailed(f"{result.errors} single requests failed; first: {result.first_error}")
    return {
        "concurrency": concurrency,
        "seconds": round(result.elapsed_s, 2),
        "images_per_s": round(n / result.elapsed_s, 1),
        "cpu_ms_per_image": round(cpu * 1000 / n, 2),
        "latency": percentiles(result.latencies_ms),
    }


async def _multi_input(
    session: aiohttp.ClientSession, percept: Percept, base: str, version_id: str, jpegs: list[bytes], n: int
) -> dict[str, Any]:
    encoded = [base64.b64encode(jpeg).decode() for jpeg in jpegs]
    requests = [
        {
            "inputs": [
                {"image": {"source": encoded[i % len(encoded)]}}
                for i in range(start, min(n, start + MAX_INPUTS))
            ]
        }
        for start in range(0, n, MAX_INPUTS)
    ]

    async def one(body: dict[str, Any]) -> None:
        async with session.post(
            f"{base}/v0.7/recognition/versions/{version_id}/inference", json=body, headers={"X-API-KEY": KEY}
        ) as response:
            if response.status != 200:
                raise RequestFailed(f"multi-input request: {response.status} {await response.text()}")
            task_id = (await response.json())["task_id"]
        task = await percept.finished(task_id)
        failed = [r for r in task["data"]["results"] if "error" in r] if task["data"] else ["no data"]
        if task["status"] != "success" or failed:
            raise RequestFailed(f"multi-input task {task_id}: {task['status']} {failed[:1]}")

    slots = asyncio.Semaphore(MULTI_INPUT_IN_FLIGHT)

    async def paced(body: dict[str, Any]) -> None:
        async with slots:
            await one(body)

    started = time.perf_counter()
    await asyncio.gather(*(paced(body) for body in requests))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(requests),
        "inputs_per_request": MAX_INPUTS,
        "seconds": round(elapsed, 2),
        "images_per_s": round(n / elapsed, 1),
    }


async def _run(
    cluster: Cluster, cache: Path, model: BenchModel, n: int, concurrency: int, probes: int
) -> dict[str, Any]:
    jpegs = sample_jpegs()
    base = cluster.url
    pids = {role: pid for role, pid in cluster.pids().items() if role != "broker"}
    probe_body = inference_bodies(jpegs[:1], Form.MULTIPART)[0]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:
        percept = Percept(session, base, KEY)
        version_id = await percept.deploy(model, ensure_built(model, cache))
        project = await _post(session, f"{base}/v1/projects", json={"name": "bench"})
        sources = await _sources(session, base, str(project["id"]), jpegs, n)
        measured = list(cluster.pids().values())  # the broker's too: both paths go through it
        await _single(percept, version_id, jpegs, WARM_UP, concurrency, measured)
        idle = await _idle_probe(percept, version_id, probe_body, probes)
        single = await _single(percept, version_id, jpegs, n, concurrency, measured)
        batch = await _batch_job(
            session,
            percept,
            base,
            model,
            sources,
            version_id=version_id,
            probe_body=probe_body,
            pids=pids,
            cpu_pids=measured,
        )
        try:
            multi = await _multi_input(session, percept, base, version_id, jpegs, n)
        except RequestFailed as error:  # the other figures are still worth printing
            multi = {"error": str(error), "images_per_s": None}
    return {
        "interactive_idle": idle,
        "single_requests": single,
        "batch_job": batch,
        "multi_input_requests": multi,
        "batch_over_single": round(batch["images_per_s"] / single["images_per_s"], 2),
        # CPU per image of the gateway, consumer and broker trees: below 1, a batch job costs less per image.
        "batch_cpu_over_single": round(batch["cpu_ms_per_image"] / single["cpu_ms_per_image"], 2),
        "multi_input_over_single": (
            round(multi["images_per_s"] / single["images_per_s"], 2) if multi["images_per_s"] else None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=10_000, help="N: sources in the job, single requests sent"
    )
    parser.add_argument("--probes", type=int, default=200, help="interactive requests on the idle service")
    parser.add_argument("--model", choices=[m.key for m in MODELS], default="tiny")
    parser.add_argument("--concurrency", type=int, default=32, help="single requests in flight")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the models are built once")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    model = next(m for m in MODELS if m.key == args.model)
    cpus = os.cpu_count() or 1
    jpegs = sample_jpegs()
    mean_kib = sum(map(len, jpegs)) // len(jpegs) // 1024
    report: dict[str, Any] = {
        "benchmark": "Annolab batch job vs single requests vs multi-input requests, same model, same run",
        "mode": "multi-process: percept gateway + 1 percept consumer, RabbitMQ on loopback, SQLite",
        "weights": "random (no model hub here): speed is the architecture's",
        "cpus": cpus,
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "model": model.key,
        "images": args.images,
        "image_files": f"{len(jpegs)} JPEGs {WIDTH}x{HEIGHT}, {mean_kib} KiB mean",
    }
    with (
        tempfile.TemporaryDirectory(prefix="percept-bench-") as scratch,
        Cluster(Path(scratch), {"PERCEPT_LOG_LEVEL": "warning"}) as cluster,
    ):
        cluster.start_consumers(1, tf_threads=cpus)
        report |= asyncio.run(_run(cluster, args.cache, model, args.images, args.concurrency, args.probes))
    report["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
