"""The competitor servers as subprocesses of the benchmark, each in its own virtualenv under bench/.venvs/.

PyTriton starts a tritonserver and a Python stub per model instance, BentoML an arbiter and its workers:
every process descended from the one we start is counted for CPU. Stopping sends SIGTERM to that one, then
SIGKILL to any of its descendants still alive once it has ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import requests

from bench.models import BenchModel
from bench.probes import family, family_cpu_seconds
from tests.rabbitmq import free_port

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / "bench" / ".venvs"
SETUP = ROOT / "bench" / "competitors" / "venvs.sh"
START_TIMEOUT_S = 180  # TensorFlow import + two models loaded, on 2 loaded cores
# PyTriton 0.7 gives a model's stub 1 s to reach its handshake socket; on a loaded machine it sometimes
# misses and the server exits. Starting again is what an operator would do.
START_ATTEMPTS = 3
STOP_TIMEOUT_S = 20


class ServerError(Exception):
    """A server did not come up; the message ends with the tail of its log."""


def ensure_venvs(names: Sequence[str]) -> dict[str, dict[str, object]]:
    """Build the missing environments (bench/competitors/venvs.sh); what it says about each, by name.

    A failed build is reported in the result, not raised: the benchmark then measures the other systems.
    """
    print(f"checking the virtualenvs of {', '.join(names)} (a first build takes minutes)", file=sys.stderr)
    done = subprocess.run(["bash", str(SETUP), *names], capture_output=True, text=True, check=False)
    report: dict[str, dict[str, object]] = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            report[str(entry.pop("venv"))] = entry
    for name in names:
        if name not in report:
            report[name] = {"status": "failed", "error": done.stderr.strip()[-1500:]}
        elif (frozen := VENVS / name / "frozen.txt").exists():
            versions = dict(line.split("==", 1) for line in frozen.read_text().splitlines() if "==" in line)
            keep = ("nvidia-pytriton", "bentoml", "tensorflow-cpu", "numpy", "pillow")
            report[name]["versions"] = {key: versions[key] for key in keep if key in versions}
    return report


def model_spec(model: BenchModel, cache: Path) -> str:
    """KEY:DIR:SIDE:PIXEL_SCALING, as bench.competitors.work.parse_model reads it."""
    return f"{model.key}:{model.folder(cache).resolve()}:{model.side}:{model.pixel_scaling}"


@dataclass
class Server:
    """One competitor: the command, the URLs that answer 200 once it is ready, and where it logs."""

    name: str
    command: list[str]
    env: dict[str, str]
    ready_urls: list[str]
    url: str
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    attempts: int = field(default=0, init=False)  # starts it took

    def __enter__(self) -> Server:
        while True:
            self.attempts += 1
            try:
                self.start()
                return self
            except ServerError:
                self.stop()
                if self.attempts >= START_ATTEMPTS:
                    raise
            except BaseException:
                self.stop()
                raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = list(self.ready_urls)
        while pending and time.monotonic() < deadline and self.process.poll() is None:
            try:
                if requests.get(pending[0], timeout=2).status_code == 200:
                    pending.pop(0)
                    continue
            except requests.RequestException:
                pass
            time.sleep(0.5)
        if pending:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise ServerError(f"{self.name} did not start (exit code {self.process.poll()}):\n{tail}")

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return family_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process is None:
            return
        started = family(self.process.pid)[1:]  # before it ends: orphans are re-parented, then untraceable
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in started:  # any that outlived their parent's shutdown
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process = None


def _env(scratch: Path, tf_threads: int, extra: dict[str, str]) -> dict[str, str]:
    (scratch / "home").mkdir(exist_ok=True)
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TF_NUM_INTRAOP_THREADS": str(tf_threads),
        "HOME": str(scratch / "home"),  # PyTriton's workspace and BentoML's home stay in the run's scratch
        **extra,
    }


# The defaults are the best of `python -m bench.tune` on this machine (bench/README.md says what was tried).
@dataclass(frozen=True)
class TritonTuning:
    max_batch_size: int = 16
    max_queue_delay_us: int = 2000
    instances: int = 2  # two infer functions: one decodes while the other predicts
    decode_threads: int = 1  # per instance
    # PyTriton's instances are threads of one process, sharing its TensorFlow pools (0: one per core).
    # One intra-op thread: no op is split across cores, the instances run side by side instead.
    tf_intra_op_threads: int = 1
    tf_inter_op_threads: int = 2  # a function call runs on an inter-op thread: one per instance


def triton(
    scratch: Path, models: Sequence[BenchModel], cache: Path, tf_threads: int, tuning: TritonTuning
) -> Server:
    http, grpc, metrics = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{http}"
    command = [str(VENVS / "triton" / "bin" / "python"), "-m", "bench.competitors.triton_server"]
    command += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    command += ["--max-batch-size", str(tuning.max_batch_size)]
    command += ["--max-queue-delay-us", str(tuning.max_queue_delay_us)]
    command += ["--instances", str(tuning.instances), "--decode-threads", str(tuning.decode_threads)]
    command += ["--tf-intra-op-threads", str(tuning.tf_intra_op_threads or tf_threads)]
    command += ["--tf-inter-op-threads", str(tuning.tf_inter_op_threads)]
    for model in models:
        command += ["--model", model_spec(model, cache)]
    return Server(
        "triton",
        command,
        _env(scratch, tf_threads, {}),
        [f"{url}/v2/models/{model.key}/ready" for model in models],
        url,
        scratch / "triton.log",
    )


@dataclass(frozen=True)
class BentoTuning:
    max_batch_size: int = 16
    max_latency_ms: int = 10000  # a target, not a wait: at 1000 BentoML refused requests (503) at c=32
    workers: int = 2  # two processes, each with its own model and batcher
    decode_threads: int = 2
    # Each worker's TensorFlow intra-op and inter-op threads (0: one per core, for each worker): one each,
    # a single-threaded engine per worker, the workers side by side.
    tf_threads_per_worker: int = 1
    tf_inter_op_threads_per_worker: int = 1


def bentoml(
    scratch: Path, models: Sequence[BenchModel], cache: Path, tf_threads: int, tuning: BentoTuning
) -> Server:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(VENVS / "bentoml" / "bin" / "bentoml"), "serve", "bench.competitors.bento_service:Bench"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    extra = {
        "BENTOML_HOME": str(scratch / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",  # no usage reports: this machine reaches no such service anyway
        "BENCH_BENTO_MODELS": ",".join(model_spec(model, cache) for model in models),
        "BENCH_BENTO_MAX_BATCH_SIZE": str(tuning.max_batch_size),
        "BENCH_BENTO_MAX_LATENCY_MS": str(tuning.max_latency_ms),
        "BENCH_BENTO_WORKERS": str(tuning.workers),
        "BENCH_BENTO_DECODE_THREADS": str(tuning.decode_threads),
        "BENCH_BENTO_TF_INTRA_OP_THREADS": str(tuning.tf_threads_per_worker or tf_threads),
        "BENCH_BENTO_TF_INTER_OP_THREADS": str(tuning.tf_inter_op_threads_per_worker),
    }
    return Server(
        "bentoml", command, _env(scratch, tf_threads, extra), [f"{url}/readyz"], url, scratch / "bentoml.log"
    )
