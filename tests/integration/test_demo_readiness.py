"""/readyz on `percept serve` waits for the demo models: registered and deployed, they answer at once.

A stand-in demo (the brightness classifier, whose build waits for the test's go) keeps this fast; the real
demos take about 20 s to build and are covered end to end in tests/e2e.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.zoo import DemoModel
from gateway.context import READINESS
from percept.demo import READINESS_NAME, start_demo_models
from schemas.networks import ImagePreprocessing, InputPreprocessing, Preprocessing
from schemas.specs import Label, LabelsOutput, SpecOutput
from schemas.versions import ClassificationPostProcessing, PostProcessing
from tests.conftest import Stack
from tests.images import png

KEY = "bright"
BODY = {"inputs": [{"image": {"source": base64.b64encode(png((250, 250, 250))).decode()}}]}


def stand_in(build: Callable[[Path], None]) -> DemoModel:
    return DemoModel(
        key=KEY,
        name="Brightness",
        description="the brightness classifier of tests.models",
        preprocessing=Preprocessing(
            inputs=[
                InputPreprocessing(
                    tensor_name="image", image=ImagePreprocessing(target_size="16x16", pixel_scaling=1.0)
                )
            ]
        ),
        outputs=[
            SpecOutput(labels=LabelsOutput(labels=[Label(id=0, name="dark"), Label(id=1, name="bright")]))
        ],
        post_processings=[
            PostProcessing(
                classification=ClassificationPostProcessing(
                    output_tensor="probabilities", thresholds=[0.5, 0.5]
                )
            )
        ],
        build=build,
        sample_image=lambda: png((250, 250, 250)),
        sample_label="bright",
    )


async def readyz(stack: Stack) -> tuple[int, dict[str, Any]]:
    response = await stack.client.get("/readyz")
    return response.status, await response.json()


async def until_ready(stack: Stack) -> None:
    async with asyncio.timeout(120):  # the consumer trial-loads the SavedModel in a child process
        while True:
            if (await readyz(stack))[0] == 200:
                return
            await asyncio.sleep(0.05)


async def test_readyz_says_not_ready_until_the_demos_answer(
    stack: Stack, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    go = threading.Event()

    def slow_build(folder: Path) -> None:
        assert go.wait(60), "the test never let the build finish"
        shutil.copytree(tiny_models["brightness"], folder)

    readiness = stack.client.app[READINESS]
    demos = start_demo_models(readiness, stack.store, stack.broker, tmp_path, [stand_in(slow_build)])
    try:
        status, body = await readyz(stack)
        assert status == 503, body
        assert READINESS_NAME in body["problems"], body
        assert (await stack.client.get("/healthz")).status == 200  # alive all along
        # What a client got in those seconds before: the spec does not exist yet.
        early = await stack.client.post(
            f"/v0.7/recognition/public/{KEY}/inference", json=BODY, headers=stack.headers()
        )
        assert early.status == 404

        go.set()
        await until_ready(stack)
        # Ready means usable: the very next request is accepted and answered.
        response = await stack.client.post(
            f"/v0.7/recognition/public/{KEY}/inference", json=BODY, headers=stack.headers()
        )
        assert response.status == 200, await response.text()
        task = await stack.wait_task((await response.json())["task_id"])
        assert task["status"] == "success", task
        assert task["data"]["outputs"][0]["labels"]["predicted"][0]["label_name"] == "bright"
    finally:
        go.set()
        await demos

    # The next start finds them registered and deployed: ready without building again.
    def no_build(_folder: Path) -> None:
        raise AssertionError("a deployed demo was built again")

    again = start_demo_models(readiness, stack.store, stack.broker, tmp_path / "fresh", [stand_in(no_build)])
    await again
    assert (await readyz(stack))[0] == 200


async def test_a_demo_that_fails_keeps_readyz_unavailable_with_the_reason(
    stack: Stack, tmp_path: Path
) -> None:
    def broken_build(_folder: Path) -> None:
        raise RuntimeError("no weights here")

    readiness = stack.client.app[READINESS]
    await start_demo_models(readiness, stack.store, stack.broker, tmp_path, [stand_in(broken_build)])
    status, body = await readyz(stack)
    assert status == 503
    assert "no weights here" in body["problems"][READINESS_NAME]
