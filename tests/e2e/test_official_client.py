"""The official `deepomatic-api` client, unchanged, against `percept serve`: upload a network trained here on
real data, create a spec and a version, infer, wait, batch-wait."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from deepomatic.api.client import Client
from deepomatic.api.exceptions import ClientError, TaskError
from deepomatic.api.inputs import ImageInput

from engine.zoo.digits import DIGITS
from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("digits") / "model"
    DIGITS.build(folder)
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_official_client_full_flow(served: Service, digits_model: Path) -> None:
    client = Client(api_key=served.key, host=served.url)
    preprocessing = DIGITS.preprocessing.model_dump(mode="json", exclude_none=True)
    network = client.Network.create(
        name="my digits",
        description="trained in the test",
        framework="tensorflow-1.x",
        preprocessing=preprocessing,
        files=_files(digits_model),
    )
    for key in ("id", "name", "description", "create_date", "update_date", "task_id"):
        assert key in network.data()
    client.Task.retrieve(network["task_id"]).wait(timeout=120)

    spec = client.RecognitionSpec.create(
        name="digits",
        description="0-9",
        outputs=[output.model_dump(mode="json") for output in DIGITS.outputs],
    )
    version = client.RecognitionVersion.create(
        spec_id=spec["id"],
        network_id=network["id"],
        post_processings=[
            post.model_dump(mode="json", exclude_none=True) for post in DIGITS.post_processings
        ],
    )
    assert client.RecognitionSpec.retrieve(spec["id"])["current_version_id"] == version["id"]
    assert [v["id"] for v in client.RecognitionSpec.retrieve(spec["id"]).versions()] == [version["id"]]

    sample = DIGITS.sample_image()
    result = version.inference(
        inputs=[ImageInput(sample, encoding="binary")], show_discarded=True, max_predictions=3
    )
    predicted = result["outputs"][0]["labels"]["predicted"]
    assert predicted[0]["label_name"] == DIGITS.sample_label
    assert isinstance(predicted[0]["score"], float) and isinstance(predicted[0]["label_id"], int)

    tasks = [
        spec.inference(inputs=[ImageInput(sample, encoding="binary")], return_task=True, wait_task=False)
        for _ in range(4)
    ]
    pending, done, errors = client.Task.batch_wait(tasks=tasks, timeout=120)
    assert len(done) == 4 and not errors and not pending
    assert all(task["data"]["outputs"][0]["labels"]["predicted"] for _, task in done)

    raw = client.Network.retrieve(network["id"]).inference(inputs=[ImageInput(sample, encoding="binary")])
    assert raw["probabilities"].shape == (10,)
    assert int(np.argmax(raw["probabilities"])) == int(DIGITS.sample_label)

    with pytest.raises(ClientError) as rejected:
        spec.inference(inputs=[])
    assert "error" in rejected.value.response.json()

    network_object = client.Network.retrieve(network["id"])
    network_object.update(name="renamed")
    assert client.Network.retrieve(network["id"])["name"] == "renamed"
    version.delete()
    network_object.delete()
    with pytest.raises(ClientError):
        client.Network.retrieve(network["id"])["name"]  # retrieve is lazy: reading a field fetches


def test_official_client_sees_task_errors(served: Service) -> None:
    client = Client(api_key=served.key, host=served.url)
    public = client.RecognitionSpec.retrieve("digits")
    assert public["id"] == "digits"
    truncated_png = DIGITS.sample_image()[:60]
    task = public.inference(
        inputs=[ImageInput(truncated_png, encoding="binary")], return_task=True, wait_task=False
    )
    with pytest.raises(TaskError) as failed:
        task.wait(timeout=120)
    assert "truncated" in str(failed.value)
