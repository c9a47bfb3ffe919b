"""A model that wedges on certain images: the consumer running it gives its jobs back by exiting (its
supervisor restarts it), redelivered jobs run alone, and the culprits fail after two lone runs, dead-lettered
with their reason, while every good job still gets its result."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from broker.amqp import AmqpBroker
from broker.topology import INFERENCE
from tests.faults.cluster import BODIES, HEADERS, Cluster, deploy_brightness, predicted_label, wait_task
from tests.rabbitmq import SERVER, RabbitMQ

pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.slow,
    pytest.mark.skipif(not SERVER.exists(), reason="rabbitmq-server is not installed"),
]
POISON = 3
GOOD = 160


@pytest.fixture
def cluster(broker: RabbitMQ, tmp_path: Path, tiny_models: dict[str, Path]) -> Iterator[tuple[Cluster, str]]:
    running = Cluster(tmp_path, broker, settings={"PERCEPT_MAX_RUN_S": "2"})
    running.start()
    try:
        yield running, deploy_brightness(running, tiny_models["wedging"])
    finally:
        running.stop()


def _post(cluster: Cluster, version_id: str, label: str) -> str:
    response = requests.post(
        f"{cluster.url}/v0.7/recognition/versions/{version_id}/inference",
        json=BODIES[label],
        headers=HEADERS,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["task_id"])


def _good_jobs_per_s(cluster: Cluster, version_id: str, poison: int) -> tuple[float, list[str]]:
    """Submits GOOD dark images and `poison` bright ones among them; waits for every good one."""
    labels = ["dark"] * GOOD
    for index in range(poison):
        labels.insert((index + 1) * GOOD // (poison + 1), "bright")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        task_ids = list(pool.map(lambda label: _post(cluster, version_id, label), labels))
        good = [task_id for task_id, label in zip(task_ids, labels, strict=True) if label == "dark"]
        tasks = list(pool.map(lambda task_id: wait_task(cluster, task_id, timeout_s=240), good))
    elapsed = time.monotonic() - started
    wrong = [task for task in tasks if task["status"] != "success" or predicted_label(task) != "dark"]
    assert not wrong, f"{len(wrong)} good jobs went wrong: {wrong[:2]}"
    return GOOD / elapsed, [t for t, label in zip(task_ids, labels, strict=True) if label == "bright"]


def test_wedging_jobs_are_found_failed_and_dead_lettered_while_good_jobs_complete(
    cluster: tuple[Cluster, str],
) -> None:
    running, version_id = cluster
    stop = threading.Event()

    def supervise() -> None:
        while not stop.wait(0.2):
            running.restart_dead_consumers()

    supervisor = threading.Thread(target=supervise)
    supervisor.start()
    try:
        normal, _ = _good_jobs_per_s(running, version_id, poison=0)
        poisoned, culprits = _good_jobs_per_s(running, version_id, poison=POISON)
        failed = [wait_task(running, task_id, timeout_s=240) for task_id in culprits]
    finally:
        stop.set()
        supervisor.join()
    letters = asyncio.run(_dead_letters(running.broker.url))
    lines = running.log_lines("consumer")
    engines_lost = sum('"engine_lost"' in line for line in lines)
    exits = sum('"consumer_started"' in line for line in lines) - running.consumers
    figures = {
        "good_jobs": GOOD,
        "poison_jobs": POISON,
        "consumer_exits": exits,
        "engine_processes_lost": engines_lost,
        "good_jobs_per_s_normal": round(normal, 1),
        "good_jobs_per_s_with_poison": round(poisoned, 1),
        "ratio": round(poisoned / normal, 2),
        "dead_lettered": len(letters),
    }
    print("poison model figures:", json.dumps(figures))
    assert [task["status"] for task in failed] == ["error"] * POISON, failed
    assert all("ended the model's process" in str(task["error"]) for task in failed), failed
    assert exits == 0, "a wedged model must cost an engine process, not a consumer"
    assert len(letters) == POISON and all(
        "ended the model's process" in (reason or "") for reason in letters
    ), letters


async def _dead_letters(url: str) -> list[str | None]:
    broker = AmqpBroker(url)
    await broker.start()
    try:
        return [letter.reason for letter in await broker.dead_letters(INFERENCE.name)]
    finally:
        await broker.close()
