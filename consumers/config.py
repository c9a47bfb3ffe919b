"""What a consumer process needs to know, handed over by the composition root."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path


@dataclass(frozen=True)
class ConsumerConfig:
    cache_dir: Path  # model files copied from the store, one folder per network
    max_batch_size: int = 8
    max_batch_delay_s: float = 0.005
    prefetch: int = 32
    # Engine processes (consumers.engines) and TensorFlow threads in each; 0 processes: one per core. One
    # single-threaded process per core predicted 1.4x the images/s of one process with a thread per core here
    # (and at a fifth less CPU per image): TensorFlow's threads wait on each other at every op.
    engine_processes: int = 0
    engine_threads: int = 1
    # Batch jobs' sources held unacknowledged, in model batches (consumers.service): an interactive job waits
    # behind at most this many batch runs of them.
    batch_prefetch_batches: int = 1
    max_image_pixels: int = 40_000_000
    fetch_timeout_s: float = 10.0
    fetch_max_bytes: int = 20 * 1024 * 1024
    outbound_allow: tuple[str, ...] = ()
    model_cache_mb: int = 2048
    decode_threads: int = 2
    # Delays in seconds between webhook attempts (PERCEPT_WEBHOOK_RETRY_SCHEDULE); about a day in all.
    webhook_retry_schedule: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800)
    webhook_timeout_s: float = 10.0
    webhook_prefetch: int = 16  # attempts in flight at once; each holds a slot for at most the timeout
    # Of those, one endpoint holds at most this many (consumers.webhook_gate); 0: a quarter of the prefetch.
    webhook_max_in_flight_per_endpoint: int = 0
    # Attempts in a row without an answer that cut an endpoint off for webhook_circuit_open_s (doubled after
    # each failed probe); 0: never cut off.
    webhook_circuit_failures: int = 5
    webhook_circuit_open_s: float = 30.0
    # Tasks, webhook attempts and idempotency records; None: kept forever.
    retention: timedelta | None = timedelta(days=30)
    maintenance_interval_s: float = 60.0
    # A lone model run longer than this has wedged its engine process (TensorFlow cannot be interrupted):
    # the process is killed and replaced; batches are suspected sooner (consumers.engines). 0: no limit.
    max_run_s: float = 300.0
    deployment_lease_s: float = 60.0  # renewed every third of it; a dead worker's deployment resumes after it
    # Trial loads of uploaded networks in a child process (consumers/sandbox.py).
    sandbox_memory_mb: int = 2048
    sandbox_timeout_s: float = 120.0

    @property
    def engine_process_count(self) -> int:
        """The engine processes in effect: the cores this process may run on, unless set."""
        return self.engine_processes or len(os.sched_getaffinity(0))

    @property
    def webhook_endpoint_in_flight(self) -> int:
        """The per-endpoint cap in effect."""
        if self.webhook_max_in_flight_per_endpoint:
            return min(self.webhook_max_in_flight_per_endpoint, self.webhook_prefetch)
        return max(1, self.webhook_prefetch // 4)
