"""Nothing lost under faults, in the multi-process mode: gateway + two consumers + a real RabbitMQ + SQLite.

Clients behave as the official one does: they retry a 5xx or a dropped connection with the same
`Idempotency-Key`. Every submission answered 200 must end with exactly one task holding the right result.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

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

JOBS = 500
SUBMITTERS = 8
# Per submitter: 500 jobs over about 20 s, faster than two consumers run the slow model (about 40 ms an
# image), so a backlog builds, prefetch windows are full and every fault lands mid-batch.
SUBMIT_GAP_S = 0.25
KILLS = 5
DRAIN_LIMIT_S = 120.0  # the bound: everything done within 120 s of the last fault
RETRY_FOR_S = 90.0


@pytest.fixture(scope="module")
def cluster(
    broker: RabbitMQ, tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
) -> Iterator[tuple[Cluster, str]]:
    running = Cluster(tmp_path_factory.mktemp("chaos-cluster"), broker)
    running.start()
    try:
        yield running, deploy_brightness(running, tiny_models["slow"])
    finally:
        running.stop()


@dataclass
class Ledger:
    """What the clients saw: one line per submission, plus every refusal on the way."""

    accepted: dict[int, str] = field(default_factory=dict)  # submission -> task id
    refusals: Counter[str] = field(default_factory=Counter)  # "503", "ConnectionError", ...
    gave_up: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _expected(index: int) -> str:
    return "bright" if index % 2 else "dark"


def _submit(url: str, version_id: str, index: int, ledger: Ledger) -> None:
    """Retry like the official client: 5xx and lost connections, same Idempotency-Key, for up to 90 s."""
    headers = {**HEADERS, "Idempotency-Key": f"chaos-{index}"}
    deadline = time.monotonic() + RETRY_FOR_S
    delay = 0.2
    while time.monotonic() < deadline:
        try:
            response = requests.post(
                f"{url}/v0.7/recognition/versions/{version_id}/inference",
                json=BODIES[_expected(index)],
                headers=headers,
                timeout=10,
            )
        except requests.RequestException as error:
            refusal = type(error).__name__
        else:
            if response.status_code == 200:
                with ledger.lock:
                    ledger.accepted[index] = response.json()["task_id"]
                return
            assert response.status_code >= 500, response.text  # a 4xx would be our bug, not a fault
            refusal = str(response.status_code)
        with ledger.lock:
            ledger.refusals[refusal] += 1
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    with ledger.lock:
        ledger.gave_up.append(index)


def _submit_all(url: str, version_id: str, ledger: Ledger, offset: int) -> None:
    def one_submitter(worker: int) -> None:
        for index in range(offset + worker, offset + JOBS, SUBMITTERS):
            _submit(url, version_id, index, ledger)
            time.sleep(SUBMIT_GAP_S)

    with ThreadPoolExecutor(max_workers=SUBMITTERS) as pool:
        list(pool.map(one_submitter, range(SUBMITTERS)))


def test_every_accepted_job_gets_exactly_one_result_through_kills_a_broker_restart_and_dropped_links(
    cluster: tuple[Cluster, str],
) -> None:
    running, version_id = cluster
    ledger = Ledger()
    started = time.monotonic()
    submitting = threading.Thread(target=_submit_all, args=(running.url, version_id, ledger, 0))
    submitting.start()
    faults: list[tuple[float, str]] = []
    rng = random.Random(7)

    def at(moment: float, name: str) -> None:
        time.sleep(max(0.0, started + moment - time.monotonic()))
        faults.append((round(time.monotonic() - started, 1), name))

    for kill in range(KILLS):
        at(2.0 + 3.5 * kill, "sigkill consumer")
        running.kill_consumer(rng.randrange(len(running.workers)))
    at(20.0, "broker killed and restarted")
    running.broker.crash_restart(down_s=2.0)
    at(26.0, "connections closed")
    running.close_connections()
    last_fault = time.monotonic()

    while submitting.is_alive():
        running.restart_dead_consumers()
        submitting.join(timeout=1.0)
    submissions_done = time.monotonic()
    assert not ledger.gave_up, f"submissions never accepted: {ledger.gave_up}\n{running.logs()}"

    results = {
        index: wait_task(running, task_id, timeout_s=DRAIN_LIMIT_S)
        for index, task_id in ledger.accepted.items()
    }
    drained_s = time.monotonic() - last_fault
    wrong = {
        i: t for i, t in results.items() if t["status"] != "success" or predicted_label(t) != _expected(i)
    }
    tasks = running.tasks_by_status()
    accepted_ids = set(ledger.accepted.values())
    succeeded = {task_id for task_id, _ in tasks.get("success", [])}
    # Tasks no client was told about: only those whose job could not be queued (the client got a 503).
    unannounced = [(i, e) for i, e in tasks.get("error", []) if i not in accepted_ids]
    computed = Counter(
        task_id
        for line in running.log_lines("consumer")
        if '"batch_ran"' in line
        for task_id in json.loads(line).get("task_ids", [])
    )
    figures = {
        "submitted": JOBS,
        "accepted": len(ledger.accepted),
        "lost": len(accepted_ids - succeeded),
        "wrong_or_failed": len(wrong),
        "duplicated_tasks": len(succeeded - accepted_ids),
        "refusals_retried": dict(ledger.refusals),
        "unannounced_error_tasks": len(unannounced),
        "pending_left": len(tasks.get("pending", [])),
        "jobs_computed_more_than_once": sum(1 for count in computed.values() if count > 1),
        "faults": faults,
        "submissions_done_s": round(submissions_done - started, 1),
        "drained_after_last_fault_s": round(drained_s, 1),
    }
    print("chaos figures:", json.dumps(figures))
    assert len(ledger.accepted) == JOBS
    assert not wrong, f"{figures}\n{list(wrong.items())[:3]}\n{running.logs()}"
    assert succeeded == accepted_ids, figures
    assert all("could not be queued" in (error or "") for _, error in unannounced), unannounced[:5]
    assert not tasks.get("pending"), figures
    assert drained_s < DRAIN_LIMIT_S, figures


PUBLISHES = 300
ANSWER_LIMIT_S = 6.0


def test_submissions_across_a_broker_crash_are_answered_in_time_and_every_acceptance_is_kept(
    cluster: tuple[Cluster, str],
) -> None:
    """No retries here: each request is answered 200 (the job is safely queued) or 503 within 6 s."""
    running, version_id = cluster
    answers: list[tuple[str, float, str | None]] = []  # (status, seconds, task id)
    lock = threading.Lock()

    def one(index: int) -> None:
        time.sleep(index * 0.04)  # 300 requests spread over 12 s; the broker dies at about 3 s
        started = time.monotonic()
        try:
            response = requests.post(
                f"{running.url}/v0.7/recognition/versions/{version_id}/inference",
                json=BODIES[_expected(index)],
                headers=HEADERS,
                timeout=30,
            )
            status, task_id = str(response.status_code), response.json().get("task_id")
        except requests.RequestException as error:
            status, task_id = type(error).__name__, None
        with lock:
            answers.append((status, time.monotonic() - started, task_id))

    with ThreadPoolExecutor(max_workers=32) as pool:
        pending = [pool.submit(one, index) for index in range(PUBLISHES)]
        time.sleep(3.0)
        running.broker.crash_restart(down_s=3.0)
        for future in pending:
            future.result()
    statuses = Counter(status for status, _, _ in answers)
    slowest = max(seconds for _, seconds, _ in answers)
    accepted = [task_id for status, _, task_id in answers if status == "200" and task_id]
    results = [wait_task(running, task_id) for task_id in accepted]
    figures = {
        "requests": PUBLISHES,
        "answers": dict(statuses),
        "slowest_answer_s": round(slowest, 2),
        "accepted_without_result": sum(1 for task in results if task["status"] != "success"),
    }
    print("broker crash figures:", json.dumps(figures))
    assert set(statuses) <= {"200", "503"}, figures
    assert slowest < ANSWER_LIMIT_S, figures
    assert figures["accepted_without_result"] == 0, figures
    assert statuses["503"] > 0, "the broker was down, yet nothing was refused: the test missed its window"


GOOD_JOBS = 120


def _throughput(running: Cluster, version_id: str, poison: bool, first: int) -> float:
    """Good jobs per second, submitted by 8 clients and waited for; with `poison`, 10 malformed jobs too."""
    started = time.monotonic()
    if poison:
        asyncio.run(publish_raw(running.broker.url, MALFORMED))
    with ThreadPoolExecutor(max_workers=SUBMITTERS) as pool:
        ledger = Ledger()
        list(pool.map(lambda i: _submit(running.url, version_id, first + i, ledger), range(GOOD_JOBS)))
        tasks = list(pool.map(lambda task_id: wait_task(running, task_id), ledger.accepted.values()))
    assert all(task["status"] == "success" for task in tasks)
    return GOOD_JOBS / (time.monotonic() - started)


def test_malformed_jobs_are_dead_lettered_with_a_reason_while_good_jobs_flow(
    cluster: tuple[Cluster, str],
) -> None:
    running, version_id = cluster
    running.restart_dead_consumers()
    asyncio.run(purge_queues(running.broker.url))
    _throughput(running, version_id, poison=False, first=10_000)  # every consumer has loaded the model
    normal = _throughput(running, version_id, poison=False, first=20_000)
    poisoned = _throughput(running, version_id, poison=True, first=30_000)
    letters = asyncio.run(_dead_letters(running.broker.url))
    figures = {
        "poison_jobs": len(MALFORMED),
        "dead_lettered": len(letters),
        "good_jobs_per_s_normal": round(normal, 1),
        "good_jobs_per_s_with_poison": round(poisoned, 1),
        "ratio": round(poisoned / normal, 2),
    }
    print("poison figures:", json.dumps(figures))
    assert set(letters) == set(MALFORMED), figures
    assert all(reason and reason.startswith("malformed message") for reason in letters.values()), letters
    assert all(process.poll() is None for process in running.workers), (
        "a malformed message crashed a consumer"
    )


async def _dead_letters(url: str) -> dict[bytes, str | None]:
    broker = AmqpBroker(url)
    await broker.start()
    try:
        return {letter.body: letter.reason for letter in await broker.dead_letters(INFERENCE.name)}
    finally:
        await broker.close()
