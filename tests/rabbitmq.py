"""A throwaway RabbitMQ node on loopback, for integration tests (running RabbitMQ without systemd is in the
team's notes, rabbitmq-here.md).

Everything lives in a scratch folder and every port is chosen at run time, so parallel runs and a RabbitMQ
already running on the machine never collide. scripts/rabbitmq.sh does the same for humans and `.ci/run`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import aio_pika

from broker.amqp import declare_topology
from broker.topology import DELAY_QUEUES, QUEUES

SBIN = Path("/usr/lib/rabbitmq/bin")
SERVER = SBIN / "rabbitmq-server"
CTL = SBIN / "rabbitmqctl"
EPMD = "epmd"
START_TIMEOUT = 60  # seconds; the node is ready in about 6 s here
STOP_TIMEOUT = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RabbitMQ:
    """One node with its own epmd. start() waits until it accepts AMQP; stop() ends both processes."""

    def __init__(self, scratch: Path, *, amqp_port: int | None = None) -> None:
        self.scratch = scratch
        self.amqp_port = amqp_port or free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def pid_file(self) -> Path:
        return self.scratch / "rabbit.pid"

    def _env(self) -> dict[str, str]:
        config = self.scratch / "rabbitmq.conf"
        plugins = self.scratch / "enabled_plugins"
        config.write_text(f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n")
        plugins.write_text("[].\n")
        return {
            **os.environ,
            "HOME": str(self.scratch),  # the Erlang cookie, shared by the server and rabbitmqctl
            "RABBITMQ_NODENAME": "rabbit@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
            # Without this the distribution port listens on every interface.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(self.scratch / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.scratch / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_CONFIG_FILE": str(config),
        }

    def ctl(self, *args: str, timeout: float = STOP_TIMEOUT) -> None:
        subprocess.run(
            [str(CTL), "-q", *args], env=self._env(), check=True, capture_output=True, timeout=timeout
        )

    def start(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        env = self._env()
        if self._epmd is None:
            # Started by us in the foreground (not `-daemon`), so we own its PID and can end exactly it.
            self._epmd = subprocess.Popen(
                [EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        log = (self.scratch / "server.out").open("ab")
        # Its own session: if it will not stop, killing its process group also ends the Erlang VM it spawned.
        self._server = subprocess.Popen(
            [str(SERVER)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            self.ctl("wait", "--timeout", str(START_TIMEOUT), str(self.pid_file), timeout=START_TIMEOUT + 10)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.stop()
            raise

    def _stop_server(self) -> None:
        if self._server is None:
            return
        if self._server.poll() is None:
            try:
                self.ctl("stop", str(self.pid_file))
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                os.killpg(self._server.pid, signal.SIGKILL)
        try:
            self._server.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self._server.pid, signal.SIGKILL)
            self._server.wait()
        self._server = None

    def restart(self) -> None:
        """Stop and start the node on the same ports and data: durable queues and persistent messages stay."""
        self._stop_server()
        self.start()

    def crash_restart(self, down_s: float = 0.0) -> None:
        """SIGKILL the node (a power cut, an OOM kill), stay down `down_s`, start it again on the same data.

        Quorum queues confirm a publish only once it is on disk, so confirmed messages survive this."""
        assert self._server is not None
        os.killpg(self._server.pid, signal.SIGKILL)
        self._server.wait(timeout=STOP_TIMEOUT)
        self._server = None
        time.sleep(down_s)
        self.start()

    def stop(self) -> None:
        self._stop_server()
        if self._epmd is not None:
            self._epmd.terminate()
            self._epmd.wait(timeout=STOP_TIMEOUT)
            self._epmd = None


async def purge_queues(url: str) -> None:
    """Empty every work and dead-letter queue, declaring the topology first on a fresh broker."""
    async with await aio_pika.connect_robust(url) as connection:
        channel = await connection.channel()
        await declare_topology(channel)
        names = [name for spec in QUEUES for name in (spec.name, spec.dead_letter_queue)]
        for name in [*names, *(delay.name for delay in DELAY_QUEUES)]:
            queue = await channel.get_queue(name, ensure=False)
            await queue.purge()
