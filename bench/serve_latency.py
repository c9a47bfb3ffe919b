"""Start-up and latency of `percept serve` on the demo models, beside the raw engine in the same run.

Prints one JSON object. Run: `.venv/bin/python -m bench.serve_latency` (about 1-2 minutes).
Latency is submit → result seen by a long poll (`GET /v0.7/tasks/{id}/?wait=30`), sequential requests.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from tests.rabbitmq import free_port

KEY = "bench-key-0123456789abcdef"
REQUESTS = 200


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "p50_ms": round(pick(0.5), 2),
        "p95_ms": round(pick(0.95), 2),
        "mean_ms": round(statistics.mean(ordered), 2),
    }


class Served:
    def __init__(self, data_dir: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "PERCEPT_DATA_DIR": str(data_dir),
            "PERCEPT_PORT": self.url.rsplit(":", 1)[1],
            "PERCEPT_BOOTSTRAP_API_KEY": KEY,
            "PERCEPT_LOG_LEVEL": "warning",
        }
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "percept.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.session = requests.Session()
        self.session.headers["X-API-KEY"] = KEY

    def seconds_to_listen(self) -> float:
        while True:
            try:
                if self.session.get(self.url + "/healthz", timeout=1).ok:
                    return time.perf_counter() - self.started
            except requests.ConnectionError:
                time.sleep(0.02)

    def infer(self, key: str, body: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
        """Milliseconds from submit to a finished task; None when the spec is not ready yet."""
        started = time.perf_counter()
        response = self.session.post(
            f"{self.url}/v0.7/recognition/public/{key}/inference", json=body, timeout=30
        )
        if response.status_code != 200:
            return 0.0, None
        task_id = response.json()["task_id"]
        while True:
            # A long poll: answered the moment the task ends, without polling traffic competing for the CPU.
            task: dict[str, Any] = self.session.get(
                f"{self.url}/v0.7/tasks/{task_id}/?wait=30", timeout=60
            ).json()
            if task["status"] != "pending":
                return (time.perf_counter() - started) * 1000, task

    def seconds_to_ready(self, key: str, body: dict[str, Any]) -> float:
        while self.infer(key, body)[1] is None:
            time.sleep(0.05)
        return time.perf_counter() - self.started

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def _raw_engine_ms(demo: Any, data_dir: Path) -> dict[str, float]:
    """The same model and image through the engine alone: decode, pre-process, predict, post-process."""
    from engine.decode import decode_image
    from engine.model import SavedModel
    from engine.postprocess import recognize
    from engine.preprocess import preprocess

    model = SavedModel.load(data_dir / "demo-models" / demo.key)
    spec = demo.preprocessing.inputs[0]
    image_bytes = demo.sample_image()
    samples = []
    for index in range(REQUESTS + 10):
        started = time.perf_counter()
        example, meta = preprocess(decode_image(image_bytes), spec.image)
        outputs = model.predict({spec.tensor_name: example[None]})
        tensors = {name: outputs[name][0] for post in demo.post_processings for name in post.tensor_names()}
        recognize(
            tensors, meta, demo.outputs, demo.post_processings, show_discarded=False, max_predictions=100
        )
        if index >= 10:
            samples.append((time.perf_counter() - started) * 1000)
    return _percentiles(samples)


def main() -> None:
    from engine.zoo import DEMO_MODELS

    report: dict[str, Any] = {"requests_per_model": REQUESTS, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "data"
        for start in ("first_start", "cached_start"):
            served = Served(data_dir)
            entry: dict[str, Any] = {"seconds_to_listen": round(served.seconds_to_listen(), 2)}
            for demo in DEMO_MODELS:
                body = {"inputs": [{"image": {"source": base64.b64encode(demo.sample_image()).decode()}}]}
                entry[f"seconds_to_{demo.key}_ready"] = round(served.seconds_to_ready(demo.key, body), 2)
            if start == "cached_start":
                for demo in DEMO_MODELS:
                    body = {"inputs": [{"image": {"source": base64.b64encode(demo.sample_image()).decode()}}]}
                    first_ms, _ = served.infer(demo.key, body)
                    steady = [served.infer(demo.key, body)[0] for _ in range(REQUESTS)]
                    raw = _raw_engine_ms(demo, data_dir)
                    service = _percentiles(steady)
                    report[demo.key] = {
                        "first_inference_ms": round(first_ms, 2),
                        "service": service,
                        "raw_engine": raw,
                        "p50_overhead_ms": round(service["p50_ms"] - raw["p50_ms"], 2),
                    }
            served.stop()
            report[start] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
