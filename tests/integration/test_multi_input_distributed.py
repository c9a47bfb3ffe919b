"""Multi-input requests in the one-machine distributed mode: a gateway, two consumer processes, a real
RabbitMQ, a shared SQLite store. A consumer killed with inputs in hand loses none of them."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.brightness import deploy_version
from tests.images import png
from tests.integration.test_distributed import KEY, _logs, _wait

pytestmark = pytest.mark.rabbitmq
HEADERS = {"X-API-KEY": KEY}
SOURCES = {
    "bright": base64.b64encode(png((255, 255, 255))).decode(),
    "dark": base64.b64encode(png((0, 0, 0))).decode(),
}


def _version(url: str, folder: Path, model: Path) -> str:
    def deployed(task_id: str) -> dict[str, object]:
        task = _wait(url, task_id)
        assert task["status"] == "success", _logs(folder)
        return task

    return deploy_version(url, HEADERS, model, deployed)


def _submit(url: str, version_id: str, expected: list[str]) -> str:
    body = {"inputs": [{"image": {"source": SOURCES[label]}} for label in expected]}
    response = requests.post(
        f"{url}/v0.7/recognition/versions/{version_id}/inference", json=body, headers=HEADERS, timeout=30
    )
    assert response.status_code == 200, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def _labels(task: dict[str, Any]) -> list[str]:
    return [
        result["outputs"][0]["labels"]["predicted"][0]["label_name"] for result in task["data"]["results"]
    ]


def test_inputs_spread_over_consumers_and_survive_a_killed_one(
    cluster: tuple[str, list[subprocess.Popen[bytes]], Path], tiny_models: dict[str, Path]
) -> None:
    url, processes, folder = cluster
    version_id = _version(url, folder, tiny_models["brightness"])
    expected = ["bright" if n % 3 else "dark" for n in range(128)]
    task = _wait(url, _submit(url, version_id, expected))
    assert task["status"] == "success", task
    assert _labels(task) == expected

    # Both consumers held: the broker hands each its prefetch of the next request's inputs, unacknowledged.
    first, second = processes[1], processes[2]
    for consumer in (first, second):
        consumer.send_signal(signal.SIGSTOP)
    try:
        task_id = _submit(url, version_id, expected)
        time.sleep(1.0)  # time for the broker to push deliveries to both held consumers
        second.kill()  # its deliveries go back to the queue, unacknowledged and unstored
        second.wait(timeout=30)
    finally:
        first.send_signal(signal.SIGCONT)
    task = _wait(url, task_id)
    assert task["status"] == "success", (task, _logs(folder))
    assert _labels(task) == expected
    # Every input of that request was stored by the survivor, the killed consumer's share included.
    survivor = [
        json.loads(line)
        for line in (folder / "consumer-1.log").read_text().splitlines()
        if line.startswith("{")
    ]
    done = [entry for entry in survivor if entry.get("event") == "job_done"]
    assert {f"{task_id}.{n}" for n in range(128)} <= {entry["task_id"] for entry in done}
    # ... and some of them came to it a second time: the kill did take inputs away from the other one.
    assert any(entry["delivery_count"] > 1 for entry in done if entry["task_id"].startswith(f"{task_id}."))
    subtasks = [
        requests.get(f"{url}/v0.7/tasks/{sub}/", headers=HEADERS, timeout=10).json()
        for sub in task["subtasks"]
    ]  # type: ignore[union-attr]
    assert [sub["data"] for sub in subtasks] == task["data"]["results"]  # type: ignore[index]
