"""`percept serve` as a user runs it: a subprocess on a free port, driven over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.rabbitmq import free_port

SERVE_KEY = "e2e-key-0123456789abcdef"


@dataclass
class Service:
    url: str
    key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    seconds_to_listen: float
    seconds_to_demo_ready: float = 0.0
    readyz_at_start: dict[str, Any] = field(default_factory=dict)  # as soon as /healthz answered

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, headers={"X-API-KEY": self.key}, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, headers={"X-API-KEY": self.key}, timeout=30, **kwargs)

    def wait_task(self, task_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task: dict[str, Any] = self.get(f"/v0.7/tasks/{task_id}/").json()
            if task["status"] != "pending":
                return task
            assert time.monotonic() < deadline, f"task {task_id} still pending; log: {self.log()}"
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def start_service(data_dir: Path, *, env: dict[str, str] | None = None) -> Service:
    port = free_port()
    log_path = data_dir.parent / f"{data_dir.name}-serve.log"
    environment = {
        **os.environ,
        "PERCEPT_DATA_DIR": str(data_dir),
        "PERCEPT_PORT": str(port),
        "PERCEPT_BOOTSTRAP_API_KEY": SERVE_KEY,
        "PERCEPT_OUTBOUND_ALLOW": "127.0.0.1/32",
        "PERCEPT_LOG_FORMAT": "json",
        **(env or {}),
    }
    started = time.monotonic()
    with log_path.open("ab") as log_file:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "percept.cli", "serve"],
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except (requests.ConnectionError, requests.Timeout):  # a loaded machine may answer late
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(
                f"percept serve did not start: {log_path.read_text(errors='replace')[-4000:]}"
            )
        time.sleep(0.1)
    return Service(url, SERVE_KEY, data_dir, process, log_path, started, time.monotonic() - started)


def stop_service(service: Service) -> int:
    service.process.terminate()
    try:
        return service.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        service.process.kill()
        raise


def wait_ready(service: Service, timeout: float = 300.0) -> None:
    """Demo models are built and deployed in the background on first start; /readyz says when they answer."""
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(service.url + "/readyz", timeout=5)
        if response.status_code == 200:
            return
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.25)


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A running `percept serve` whose demo models are ready, by /readyz alone (tests rely on no retries)."""
    service = start_service(tmp_path_factory.mktemp("serve") / "data")
    try:
        service.readyz_at_start = requests.get(service.url + "/readyz", timeout=5).json()
        wait_ready(service)
        service.seconds_to_demo_ready = time.monotonic() - service.started_at
        yield service
    finally:
        stop_service(service)
