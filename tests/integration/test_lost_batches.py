"""How a consumer reruns the jobs of a batch whose engine process was lost: the real gateway, consumer and
engine processes in one process, with a model that wedges on bright images."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumers import metrics
from tests.conftest import Stack, embedded_stack
from tests.images import png
from tests.integration.test_recognition_flow import _classifier_version

MAX_RUN_S = 2.0


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """The shared fixture's stack, with a short PERCEPT_MAX_RUN_S: a wedged last lone run ends in seconds."""
    async with embedded_stack(tmp_path, max_run_s=MAX_RUN_S) as running:
        yield running


async def _infer(stack: Stack, version_id: str, shade: int) -> dict[str, object]:
    body = {"inputs": [{"image": {"source": base64.b64encode(png((shade, shade, shade))).decode()}}]}
    path = f"/v0.7/recognition/versions/{version_id}/inference"
    response = await stack.client.post(path, json=body, headers=stack.headers())
    assert response.status == 200, await response.text()
    return await stack.wait_task((await response.json())["task_id"])


def _stalled() -> float:
    return metrics.ENGINE_RESTARTS.labels("stalled")._value.get()  # type: ignore[attr-defined,no-any-return]


async def test_a_stalled_batch_of_one_counts_as_the_jobs_first_lone_run(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    _, version = await _classifier_version(stack, tiny_models, model="wedging")
    for _ in range(3):  # the model's pace, which the suspicion deadline follows
        assert (await _infer(stack, version["id"], 0))["status"] == "success"
    stalled = _stalled()
    task = await _infer(stack, version["id"], 255)  # alone: a batch of one
    assert task["status"] == "error"
    assert "ended the model's process 2 times" in str(task["error"]), task
    # The batch of one was its first lone run: only its last one followed, with all of PERCEPT_MAX_RUN_S (a
    # first lone run in quarantine would have spun for another suspicion deadline, and cost a process).
    assert _stalled() == stalled + 2
