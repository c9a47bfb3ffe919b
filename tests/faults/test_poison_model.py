"""Poison jobs among good ones (issue 5): a model that crashes its process on certain images, one that wedges
on them, and malformed messages. The culprits end dead-lettered with their reason, every good job gets its
result, no consumer exits, and each test prints good-job throughput with the poison against without it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from broker.amqp import AmqpBroker
from broker.topology import INFERENCE
from tests.faults.cluster import (
    BODIES,
    HEADERS,
    MALFORMED,
    Cluster,
    deploy_brightness,
    predicted_label,
    publish_raw,
    wait_task,
)
from tests.rabbitmq import SERVER, RabbitMQ, purge_queues

pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.slow,
    pytest.mark.skipif(not SERVER.exists(), reason="rabbitmq-server is not installed"),
]
# Long enough that the good jobs take a few seconds at the normal rate: the ratio then measures what the
# poison costs the stream, not the first second of it.
GOOD = 480
ENDED_PROCESS = "ended the model's process"


@pytest.fixture
def cluster(broker: RabbitMQ, tmp_path: Path) -> Iterator[Cluster]:
    asyncio.run(purge_queues(broker.url))  # the module's tests share the node: no earlier dead letters
    running = Cluster(tmp_path, broker, settings={"PERCEPT_MAX_RUN_S": "2"})
    running.start()
    stop = threading.Event()

    def supervise() -> None:  # what systemd would do, should a consumer exit after all
        while not stop.wait(0.2):
            running.restart_dead_consumers()

    supervisor = threading.Thread(target=supervise)
    supervisor.start()
    try:
        yield running
    finally:
        stop.set()
        supervisor.join()
        running.stop()


def _post(cluster: Cluster, version_id: str, label: str) -> str | None:
    """A job through the gateway, or (label "malformed") a broken message straight onto the queue."""
    if label.startswith("malformed"):
        asyncio.run(publish_raw(cluster.broker.url, [MALFORMED[int(label.removeprefix("malformed"))]]))
        return None
    response = requests.post(
        f"{cluster.url}/v0.7/recognition/versions/{version_id}/inference",
        json=BODIES[label],
        headers=HEADERS,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["task_id"])


def _stream(poison: list[str]) -> list[str]:
    """GOOD dark images with the poison spread evenly among them."""
    labels = ["dark"] * GOOD
    for index, label in enumerate(poison):
        labels.insert((index + 1) * GOOD // (len(poison) + 1) + index, label)
    return labels


def _good_jobs_per_s(cluster: Cluster, version_id: str, poison: list[str]) -> tuple[float, list[str]]:
    """Submits the stream from 8 clients and waits for every good job; returns the bright jobs' task ids."""
    labels = _stream(poison)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        task_ids = list(pool.map(lambda label: _post(cluster, version_id, label), labels))
        good = [task_id for task_id, label in zip(task_ids, labels, strict=True) if label == "dark"]
        tasks = list(pool.map(lambda task_id: wait_task(cluster, task_id, timeout_s=240), good))
    elapsed = time.monotonic() - started
    wrong = [task for task in tasks if task["status"] != "success" or predicted_label(task) != "dark"]
    assert not wrong, f"{len(wrong)} good jobs went wrong: {wrong[:2]}"
    bright = [t for t, label in zip(task_ids, labels, strict=True) if label == "bright" and t is not None]
    return GOOD / elapsed, bright


@dataclass(frozen=True)
class _Run:
    figures: dict[str, Any]
    failed: list[dict[str, Any]]
    letters: list[str | None]


def _run(cluster: Cluster, folder: Path, poison: list[str]) -> _Run:
    version_id = deploy_brightness(cluster, folder)
    _good_jobs_per_s(cluster, version_id, poison=[])  # warm: both consumers have loaded the model
    normal, _ = _good_jobs_per_s(cluster, version_id, poison=[])
    poisoned, culprits = _good_jobs_per_s(cluster, version_id, poison=poison)
    failed = [wait_task(cluster, task_id, timeout_s=240) for task_id in culprits]
    letters = asyncio.run(_dead_letters(cluster.broker.url))
    lines = cluster.log_lines("consumer")
    figures = {
        "good_jobs": GOOD,
        "poison_jobs": len(poison),
        "consumer_exits": sum('"consumer_started"' in line for line in lines) - cluster.consumers,
        "engine_processes_lost": sum('"engine_lost"' in line for line in lines),
        "good_jobs_per_s_normal": round(normal, 1),
        "good_jobs_per_s_with_poison": round(poisoned, 1),
        "ratio": round(poisoned / normal, 2),
        "dead_lettered": len(letters),
    }
    return _Run(figures, failed, letters)


def _check_culprits(run: _Run, culprits: int, malformed: int) -> None:
    assert [task["status"] for task in run.failed] == ["error"] * culprits, run.failed
    assert all(ENDED_PROCESS in str(task["error"]) for task in run.failed), run.failed
    assert run.figures["consumer_exits"] == 0, "a poison job must cost an engine process, not a consumer"
    reasons = sorted(reason or "" for reason in run.letters)
    assert len(reasons) == culprits + malformed, run.letters
    assert sum(ENDED_PROCESS in reason for reason in reasons) == culprits, reasons
    assert sum(reason.startswith("malformed message") for reason in reasons) == malformed, reasons


def test_crashing_jobs_and_malformed_messages_are_dead_lettered_while_good_jobs_flow(
    cluster: Cluster, tiny_models: dict[str, Path]
) -> None:
    """The issue's scenario: 10 poison jobs, 5 that abort the model's process and 5 malformed messages."""
    poison = [label for index in range(5) for label in ("bright", f"malformed{index}")]
    run = _run(cluster, tiny_models["crashing"], poison)
    print("crash poison figures:", json.dumps(run.figures))
    _check_culprits(run, culprits=5, malformed=5)


def test_wedging_jobs_are_found_failed_and_dead_lettered_while_good_jobs_flow(
    cluster: Cluster, tiny_models: dict[str, Path]
) -> None:
    """A model that spins on bright images: each culprit costs at least a suspicion deadline."""
    run = _run(cluster, tiny_models["wedging"], ["bright"] * 3)
    print("poison model figures:", json.dumps(run.figures))
    _check_culprits(run, culprits=3, malformed=0)


async def _dead_letters(url: str) -> list[str | None]:
    broker = AmqpBroker(url)
    await broker.start()
    try:
        return [letter.reason for letter in await broker.dead_letters(INFERENCE.name)]
    finally:
        await broker.close()
