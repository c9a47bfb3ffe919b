"""A multi-process Percept for fault tests: `percept gateway` + consumers on a private RabbitMQ node and a
shared SQLite store, with the levers the tests pull: SIGKILL a consumer, restart the broker, drop connections.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import requests

from broker.topology import INFERENCE
from tests import brightness
from tests.images import png
from tests.rabbitmq import RabbitMQ, free_port

KEY = "chaos-key-0123456789abcdef"
HEADERS = {"X-API-KEY": KEY}
IMAGES = {"bright": png((255, 255, 255)), "dark": png((0, 0, 0))}
BODIES = {
    label: {"inputs": [{"image": {"source": base64.b64encode(data).decode()}}]}
    for label, data in IMAGES.items()
}

# Messages no producer of Percept sends: each must be dead-lettered as malformed, with its reason.
MALFORMED = [
    b"not json at all",
    b"{}",
    b"[1, 2, 3]",
    b'{"task_id": 7}',
    b'{"task_id": "x", "owner": "t"}',
    b'{"task_id": "x", "owner": "t", "model": "nope", "image": {}}',
    b"\xff\xfe\x00garbage",
    b'{"task_id": "x", "owner": "t", "model": {}, "image": {"data": 5}}',
    b'{"task_id": "' + b"9" * 5000 + b'"}',
    b"null",
]


@dataclass
class Cluster:
    scratch: Path
    broker: RabbitMQ
    consumers: int = 2
    settings: dict[str, str] = field(default_factory=dict)  # more PERCEPT_* variables for every process
    url: str = ""
    gateway: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    spawned: int = 0

    @property
    def database(self) -> Path:
        return self.scratch / "percept.sqlite3"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PERCEPT_BROKER_URL": self.broker.url,
            "PERCEPT_STORE_URL": f"sqlite:///{self.database}",
            "PERCEPT_DATA_DIR": str(self.scratch / "data"),
            "PERCEPT_BOOTSTRAP_API_KEY": KEY,
            "PERCEPT_LOG_FORMAT": "json",
            "PERCEPT_METRICS_PORT": "0",
            # One TensorFlow thread per consumer: two consumers share this machine's two cores.
            "TF_NUM_INTRAOP_THREADS": "1",
            "TF_NUM_INTEROP_THREADS": "1",
            # Maintenance inspects dead-letter queues by holding their messages for a moment: out of the way
            # of the tests' own inspection, unless a test asks for it.
            "PERCEPT_MAINTENANCE_INTERVAL_S": "3600",
            **self.settings,
        }

    def _spawn(self, role: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.spawned += 1
        with (self.scratch / f"{role}-{self.spawned}.log").open("wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "percept.cli", role], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.gateway = self._spawn("gateway", {**self._env(), "PERCEPT_PORT": str(port)})
        self.workers = [self._spawn("consumer", self._env()) for _ in range(self.consumers)]
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.gateway.poll() is not None:
                logs = self.logs()
                self.stop()  # no process outlives a failed start
                raise AssertionError(logs)
            time.sleep(0.2)

    def kill_consumer(self, index: int, *, replace: bool = True) -> None:
        """SIGKILL, as the OOM killer or a lost machine would; by default a replacement starts at once."""
        self.workers[index].send_signal(signal.SIGKILL)
        self.workers[index].wait(timeout=30)
        if replace:
            self.workers[index] = self._spawn("consumer", self._env())

    def restart_dead_consumers(self) -> int:
        """What a supervisor (systemd, Docker's restart policy) does; returns how many it restarted."""
        restarted = 0
        for index, worker in enumerate(self.workers):
            if worker.poll() is not None:
                self.workers[index] = self._spawn("consumer", self._env())
                restarted += 1
        return restarted

    def close_connections(self) -> None:
        self.broker.ctl("close_all_connections", "chaos test: connections dropped")

    def stop(self) -> list[int | None]:
        processes = [p for p in [self.gateway, *self.workers] if p is not None]
        for process in processes:
            if process.poll() is None:
                process.terminate()
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=60))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(None)
        return codes

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.scratch.glob("*.log"))
        )

    def log_lines(self, role: str) -> list[str]:
        return [
            line
            for path in sorted(self.scratch.glob(f"{role}-*.log"))
            for line in path.read_text().splitlines()
        ]

    def network_row(self, network_id: str) -> dict[str, Any]:
        with sqlite3.connect(self.database) as db:
            (body,) = db.execute("SELECT body FROM networks WHERE id = ?", (network_id,)).fetchone()
        return dict(json.loads(body))

    def patch_network(self, network_id: str, **fields: object) -> None:
        """Write fields straight into the stored network: the state a crash would have left."""
        with sqlite3.connect(self.database) as db:
            for name, value in fields.items():
                db.execute(
                    "UPDATE networks SET body = json_set(body, ?, json(?)) WHERE id = ?",
                    (f"$.{name}", json.dumps(value), network_id),
                )

    def tasks_by_status(self) -> dict[str, list[tuple[str, str | None]]]:
        """Inference tasks straight from the store file: (id, error) per status."""
        with sqlite3.connect(self.database) as db:
            rows = db.execute(
                "SELECT id, json_extract(body, '$.status'), json_extract(body, '$.error') FROM tasks"
                " WHERE json_extract(body, '$.kind') = 'inference'"
            ).fetchall()
        by_status: dict[str, list[tuple[str, str | None]]] = {}
        for task_id, status, error in rows:
            by_status.setdefault(status, []).append((task_id, error))
        return by_status


def upload_brightness(cluster: Cluster, folder: Path) -> dict[str, Any]:
    return brightness.upload_network(cluster.url, HEADERS, folder)


def deploy_brightness(cluster: Cluster, folder: Path) -> str:
    """Upload the classifier, wait for it, make a spec and a version; returns the version id."""
    return brightness.deploy_version(
        cluster.url, HEADERS, folder, lambda task_id: wait_task(cluster, task_id)
    )


def wait_task(cluster: Cluster, task_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = requests.get(
                f"{cluster.url}/v0.7/tasks/{task_id}/", params={"wait": 5}, headers=HEADERS, timeout=15
            )
            if response.status_code == 200 and (task := response.json())["status"] != "pending":
                return dict(task)
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"task {task_id} still pending\n{cluster.logs()}"
        time.sleep(0.05)


def predicted_label(task: dict[str, Any]) -> str:
    return str(task["data"]["outputs"][0]["labels"]["predicted"][0]["label_name"])


async def publish_raw(url: str, bodies: list[bytes]) -> None:
    """Straight onto the inference queue, as a buggy or hostile producer would."""
    async with await aio_pika.connect_robust(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        for index, body in enumerate(bodies):
            message = aio_pika.Message(body, message_id=f"poison-{index}", delivery_mode=2)
            await channel.default_exchange.publish(message, routing_key=INFERENCE.name)
