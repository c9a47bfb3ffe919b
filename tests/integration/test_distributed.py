"""The one-machine distributed mode: `percept gateway` + two `percept consumer` processes, a real RabbitMQ,
and a shared SQLite store."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.brightness import deploy_version
from tests.images import png
from tests.rabbitmq import free_port, purge_queues

pytestmark = pytest.mark.rabbitmq
KEY = "dist-key-0123456789abcdef"


@pytest.fixture
def cluster(tmp_path: Path, rabbitmq_url: str) -> Iterator[tuple[str, list[subprocess.Popen[bytes]], Path]]:
    asyncio.run(purge_queues(rabbitmq_url))  # other suites share this broker
    port = free_port()
    env = {
        **os.environ,
        "PERCEPT_BROKER_URL": rabbitmq_url,
        "PERCEPT_STORE_URL": f"sqlite:///{tmp_path / 'percept.sqlite3'}",
        "PERCEPT_DATA_DIR": str(tmp_path / "data"),
        "PERCEPT_BOOTSTRAP_API_KEY": KEY,
        "PERCEPT_PORT": str(port),
        "PERCEPT_LOG_FORMAT": "json",
    }
    processes = []
    for index, role in enumerate(["gateway", "consumer", "consumer"]):
        with (tmp_path / f"{role}-{index}.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "percept.cli", role], env=env, stdout=log, stderr=subprocess.STDOUT
                )
            )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if requests.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), _logs(tmp_path)
        time.sleep(0.2)
    try:
        yield url, processes, tmp_path
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def _logs(folder: Path) -> str:
    return "\n".join(
        f"== {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(folder.glob("*.log"))
    )


def _wait(url: str, task_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while True:
        task: dict[str, object] = requests.get(
            f"{url}/v0.7/tasks/{task_id}/", headers={"X-API-KEY": KEY}, timeout=10
        ).json()
        if task["status"] != "pending":
            return task
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _long_poll(url: str, task_id: str, wait: float) -> tuple[dict[str, object], float]:
    """The task after `?wait=`, and how long the gateway held the request."""
    started = time.monotonic()
    response = requests.get(
        f"{url}/v0.7/tasks/{task_id}/", params={"wait": wait}, headers={"X-API-KEY": KEY}, timeout=wait + 10
    )
    assert response.status_code == 200, response.text
    task: dict[str, object] = response.json()
    return task, time.monotonic() - started


def _check_long_poll(url: str, consumers: list[subprocess.Popen[bytes]], version_id: str) -> None:
    """A long poll in the gateway process is woken by the consumer process that finished the task."""
    for consumer in consumers:  # held still, so the task stays pending for as long as we need
        consumer.send_signal(signal.SIGSTOP)
    try:
        body = {"inputs": [{"image": {"source": base64.b64encode(png((255, 255, 255))).decode()}}]}
        response = requests.post(
            f"{url}/v0.7/recognition/versions/{version_id}/inference",
            json=body,
            headers={"X-API-KEY": KEY},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        task_id = response.json()["task_id"]
        task, elapsed = _long_poll(url, task_id, 0.3)
        assert task["status"] == "pending" and elapsed >= 0.3
        with ThreadPoolExecutor(max_workers=1) as pool:
            poll = pool.submit(_long_poll, url, task_id, 30.0)
            # A head start, so the poll is usually waiting when the consumers resume; when it is not, it
            # reads the finished task at once and the checks below still hold.
            time.sleep(0.5)
            for consumer in consumers:
                consumer.send_signal(signal.SIGCONT)
            task, elapsed = poll.result()
    finally:
        for consumer in consumers:
            consumer.send_signal(signal.SIGCONT)
    assert task["status"] == "success", task
    assert elapsed < 30.0  # answered on the event, not at the deadline


def test_gateway_and_two_consumers_share_the_work(
    cluster: tuple[str, list[subprocess.Popen[bytes]], Path], tiny_models: dict[str, Path]
) -> None:
    url, processes, folder = cluster
    headers = {"X-API-KEY": KEY}

    def deployed(task_id: str) -> dict[str, object]:
        task = _wait(url, task_id)
        assert task["status"] == "success", _logs(folder)
        return task

    version_id = deploy_version(url, headers, tiny_models["brightness"], deployed)
    _check_long_poll(url, processes[1:], version_id)
    images = {"bright": png((255, 255, 255)), "dark": png((0, 0, 0))}
    submitted = []
    for index in range(60):
        expected = "bright" if index % 2 else "dark"
        body = {"inputs": [{"image": {"source": base64.b64encode(images[expected]).decode()}}]}
        response = requests.post(
            f"{url}/v0.7/recognition/versions/{version_id}/inference",
            json=body,
            headers=headers,
            timeout=10,
        )
        assert response.status_code == 200, response.text
        submitted.append((response.json()["task_id"], expected))
    for task_id, expected in submitted:
        task = _wait(url, task_id)
        assert task["status"] == "success", task
        outputs = task["data"]["outputs"]  # type: ignore[index]
        assert outputs[0]["labels"]["predicted"][0]["label_name"] == expected
    worked = [p for p in folder.glob("consumer-*.log") if "batch_ran" in p.read_text(errors="replace")]
    assert len(worked) == 2, _logs(folder)
    for process in processes:
        process.terminate()
    assert [process.wait(timeout=60) for process in processes] == [0, 0, 0], _logs(folder)
