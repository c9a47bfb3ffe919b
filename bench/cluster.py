"""Percept in its multi-process mode on this machine: RabbitMQ, `percept gateway`, N `percept consumer`s and
one SQLite file, as README.md's "Distributed mode" runs it. Every process started here is stopped on exit.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import requests

from tests.rabbitmq import RabbitMQ, free_port, purge_queues

KEY = "bench-key-0123456789abcdef"
START_TIMEOUT_S = 120  # a consumer imports TensorFlow: about 10 s on these 2 cores, more under load
STOP_TIMEOUT_S = 30


class ClusterError(Exception):
    """A process did not come up; the message ends with the tail of its log."""


class Cluster:
    def __init__(
        self, scratch: Path, settings: dict[str, str], *, gateway_profile: Path | None = None
    ) -> None:
        self.scratch = scratch
        self.settings = settings  # PERCEPT_* variables every Percept process gets
        self.gateway_profile = (
            gateway_profile  # the gateway runs under cProfile, its stats written here on exit
        )
        self.store_path = scratch / "percept.sqlite3"
        self.url = f"http://127.0.0.1:{free_port()}"
        self._rabbitmq: RabbitMQ | None = None
        self._broker_url = os.environ.get("PERCEPT_TEST_AMQP_URL", "")  # a broker we neither own nor stop
        self._gateway: subprocess.Popen[bytes] | None = None
        self._consumers: list[tuple[subprocess.Popen[bytes], str]] = []  # with each one's metrics URL

    def __enter__(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _start(self) -> None:
        if not self._broker_url:
            self._rabbitmq = RabbitMQ(self.scratch / "rabbitmq")
            self._rabbitmq.start()
            self._broker_url = self._rabbitmq.url
        asyncio.run(purge_queues(self._broker_url))  # a shared broker may hold another run's jobs
        self._gateway = self._spawn("gateway", {"PERCEPT_PORT": self.url.rsplit(":", 1)[1]})
        self._wait_until_answers(self._gateway, "gateway", self.url + "/readyz")

    def start_consumers(self, count: int, tf_threads: int) -> None:
        """Replace the running consumers by `count` new ones, each with `tf_threads` TensorFlow threads."""
        self._stop_consumers()
        for index in range(count):
            port = free_port()
            env = {"PERCEPT_METRICS_PORT": str(port), "TF_NUM_INTRAOP_THREADS": str(tf_threads)}
            self._consumers.append(
                (self._spawn(f"consumer-{index}", env), f"http://127.0.0.1:{port}/metrics")
            )
        # The metrics server starts once the consumer is subscribed: answering means ready.
        for index, (process, metrics_url) in enumerate(self._consumers):
            self._wait_until_answers(process, f"consumer-{index}", metrics_url)

    async def purge_queues(self) -> None:
        """Drop every queued message: with no consumer running, jobs would pile up in the broker."""
        await purge_queues(self._broker_url)

    @property
    def consumer_metrics_urls(self) -> list[str]:
        return [metrics_url for _, metrics_url in self._consumers]

    def pids(self) -> dict[str, int]:
        """Process ids by role: `gateway`, `consumer-N`, and `broker` (the Erlang VM) when we started it."""
        assert self._gateway is not None
        pids = {"gateway": self._gateway.pid}
        pids |= {f"consumer-{index}": process.pid for index, (process, _) in enumerate(self._consumers)}
        if self._rabbitmq is not None:
            pids["broker"] = int(self._rabbitmq.pid_file.read_text().strip())
        return pids

    def _spawn(self, role: str, extra: dict[str, str]) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            **self.settings,
            **extra,
            "PERCEPT_BROKER_URL": self._broker_url,
            "PERCEPT_STORE_URL": f"sqlite:///{self.store_path}",
            "PERCEPT_DATA_DIR": str(self.scratch / "data"),
            "PERCEPT_BOOTSTRAP_API_KEY": KEY,
            "PERCEPT_LOG_FORMAT": "json",
        }
        profiler: list[str] = []
        if role == "gateway" and self.gateway_profile is not None:
            profiler = ["-m", "cProfile", "-o", str(self.gateway_profile)]
        with (self.scratch / f"{role}.log").open("ab") as log:
            # Own session: Ctrl-C reaches only the benchmark, which then stops everything in order.
            return subprocess.Popen(
                [sys.executable, *profiler, "-m", "percept.cli", role.split("-")[0]],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_until_answers(self, process: subprocess.Popen[bytes], role: str, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        tail = (self.scratch / f"{role}.log").read_text(errors="replace")[-3000:]
        raise ClusterError(f"{role} did not start (exit code {process.poll()}):\n{tail}")

    def _stop_consumers(self) -> None:
        _stop([process for process, _ in self._consumers])
        self._consumers = []

    def stop(self) -> None:
        self._stop_consumers()
        if self._gateway is not None:
            _stop([self._gateway])
            self._gateway = None
        if self._rabbitmq is not None:
            self._rabbitmq.stop()  # the server and the epmd it started
            self._rabbitmq = None


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
