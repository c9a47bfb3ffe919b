"""Prometheus metrics scraped from the in-process stack: the gateway's /metrics also shows the consumer's.

Metrics are per process and other tests add to them, so every check compares a scrape before and after.
"""

from __future__ import annotations

import base64
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from broker.topology import INFERENCE
from tests.conftest import Stack
from tests.images import png

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def _scrape(stack: Stack) -> Samples:
    response = await stack.client.get("/metrics")  # no API key: Prometheus sends none
    assert response.status == 200, await response.text()
    assert response.content_type == "text/plain"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return _value(after, name, **labels) - _value(before, name, **labels)


async def _infer(stack: Stack, network_id: int, image: bytes) -> dict[str, object]:
    response = await stack.client.post(
        f"/v0.7/networks/{network_id}/inference",
        json={"inputs": [{"image": {"source": base64.b64encode(image).decode()}}]},
        headers=stack.headers(),
    )
    assert response.status == 200, await response.text()
    return await stack.wait_task((await response.json())["task_id"])


async def _deployed_network(stack: Stack, tiny_models: dict[str, Path]) -> int:
    network = await stack.upload_network(tiny_models["brightness"], target_size="16x16")
    assert (await stack.wait_task(network["task_id"]))["status"] == "success"
    network_id = network["id"]
    assert isinstance(network_id, int)
    return network_id


async def test_one_inference_moves_request_and_consumer_metrics(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    before = await _scrape(stack)
    network_id = await _deployed_network(stack, tiny_models)
    task = await _infer(stack, network_id, png((255, 255, 255)))
    assert task["status"] == "success", task
    after = await _scrape(stack)

    polled = {"method": "GET", "route": "/v0.7/tasks/{id}/"}
    assert _grew(before, after, "percept_http_requests_total", **polled, status="200") >= 2
    assert _grew(before, after, "percept_http_request_seconds_count", **polled) >= 2
    inferred = {"method": "POST", "route": "/v0.7/networks/{id}/inference"}
    assert _grew(before, after, "percept_http_requests_total", **inferred, status="200") == 1
    # Route labels are the app's path templates (every app in this process has the same routes), never paths.
    routes = {dict(labels)["route"] for name, labels in after if name == "percept_http_requests_total"}
    assert stack.client.app is not None
    templates = {resource.canonical for resource in stack.client.app.router.resources()}
    assert routes <= templates | {"unmatched"}, routes - templates
    assert f"/v0.7/tasks/{task['id']}/" not in routes

    assert _grew(before, after, "percept_inference_tasks_total", status="success") == 1
    assert _grew(before, after, "percept_inference_batch_size_count") == 1
    assert _grew(before, after, "percept_inference_batch_size_sum") == 1
    for histogram in (
        "percept_inference_delivery_to_batch_seconds",
        "percept_inference_prepare_seconds",
        "percept_inference_predict_seconds",
        "percept_inference_postprocess_seconds",
    ):
        assert _grew(before, after, f"{histogram}_count") == 1, histogram
        assert _grew(before, after, f"{histogram}_sum") > 0, histogram
    assert _grew(before, after, "percept_model_load_seconds_count") >= 1
    assert ("percept_queue_depth", frozenset({("queue", INFERENCE.name)})) in after
    assert _value(after, "percept_queue_depth", queue=INFERENCE.name) == 0
    assert _value(after, "percept_inference_jobs_in_flight") == 0


async def test_failed_task_and_unknown_route_are_counted(stack: Stack, tiny_models: dict[str, Path]) -> None:
    network_id = await _deployed_network(stack, tiny_models)
    before = await _scrape(stack)
    task = await _infer(stack, network_id, png((1, 2, 3))[:40])  # truncated: cannot be decoded
    assert task["status"] == "error", task
    response = await stack.client.get(f"/no/such/{network_id}", headers=stack.headers())
    assert response.status == 404
    after = await _scrape(stack)

    assert _grew(before, after, "percept_inference_tasks_total", status="error") == 1
    assert _grew(before, after, "percept_inference_tasks_total", status="success") == 0
    assert _grew(before, after, "percept_inference_prepare_seconds_count") == 1  # timed although it failed
    assert _grew(before, after, "percept_inference_batch_size_count") == 0
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert _grew(before, after, "percept_http_requests_total", **unmatched) == 1


async def test_metrics_need_no_key_and_speak_openmetrics(stack: Stack) -> None:
    response = await stack.client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.status == 200
    assert response.content_type == "application/openmetrics-text"
    assert (await response.text()).rstrip().endswith("# EOF")
    assert (await stack.client.get("/v0.7/tasks/")).status == 401  # the API itself still needs a key
