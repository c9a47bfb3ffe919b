"""Prometheus metrics of a consumer process: batches, where a job's time goes, model loads, outcomes.

Defined once per process in prometheus-client's default registry, so several consumers in one process (tests,
`percept serve`) add to the same series. No label names a network or a task: their number is unbounded.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from schemas.documents import TaskStatus

# Compute steps run from about a millisecond (a small image) to seconds (a large batch on a CPU).
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

JOBS_IN_FLIGHT = Gauge(
    "percept_inference_jobs_in_flight",
    "Inference deliveries received by this process and not yet acknowledged or rejected",
)
JOBS_WAITING_FOR_STORE = Gauge(
    "percept_jobs_waiting_for_store",
    "Jobs holding their delivery until the store answers again (non-zero means the store is unreachable)",
)
BATCH_SIZE = Histogram(
    "percept_inference_batch_size",
    "Images per batch run by the model",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
DELIVERY_TO_BATCH_SECONDS = Histogram(
    "percept_inference_delivery_to_batch_seconds",
    "From a delivery reaching the consumer to its batch starting: image fetch, decoding and batching wait",
    buckets=(*_STEP_BUCKETS, 60.0),
)
PREPARE_SECONDS = Histogram(
    "percept_inference_prepare_seconds",
    "Decoding and pre-processing one image, on a decode thread",
    buckets=_STEP_BUCKETS,
)
PREDICT_SECONDS = Histogram(
    "percept_inference_predict_seconds",
    "Forward passes of one batch (one per group of equal input shapes)",
    buckets=_STEP_BUCKETS,
)
POSTPROCESS_SECONDS = Histogram(
    "percept_inference_postprocess_seconds",
    "Turning one batch's raw outputs into results (thresholds, NMS)",
    buckets=_STEP_BUCKETS,
)
MODEL_LOAD_SECONDS = Histogram(
    "percept_model_load_seconds",
    "Loading a SavedModel from the local model cache into memory",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
TASKS = Counter(
    "percept_inference_tasks_total",
    "Inference tasks this process finished, by the status it stored",
    ["status"],
)
# Both series exist from the start, so rate() and error ratios work before the first failure.
for _status in (TaskStatus.SUCCESS, TaskStatus.ERROR):
    TASKS.labels(_status.value)
ENGINE_RESTARTS = Counter(
    "percept_engine_processes_lost_total",
    "Engine processes (where models run) that crashed or were killed at a deadline, and were replaced",
    ["reason"],
)
for _reason in ("crashed", "stalled"):
    ENGINE_RESTARTS.labels(_reason)
