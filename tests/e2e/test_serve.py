"""The README walk-through against a real `percept serve`: demo models answer on their sample images."""

from __future__ import annotations

import base64

import pytest

from engine.zoo import DEMO_MODELS
from tests.e2e.conftest import Service, start_service, stop_service

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("demo", DEMO_MODELS, ids=[d.key for d in DEMO_MODELS])
def test_demo_models_answer_on_their_samples(served: Service, demo: object) -> None:
    from engine.zoo import DemoModel

    assert isinstance(demo, DemoModel)
    spec = served.get(f"/v0.7/recognition/public/{demo.key}/").json()
    assert spec["id"] == demo.key and spec["current_version_id"]
    source = "data:image/png;base64," + base64.b64encode(demo.sample_image()).decode()
    response = served.post(
        f"/v0.7/recognition/public/{demo.key}/inference", json={"inputs": [{"image": {"source": source}}]}
    )
    assert response.status_code == 200, response.text
    task = served.wait_task(response.json()["task_id"])
    assert task["status"] == "success", task
    predicted = task["data"]["outputs"][0]["labels"]["predicted"]
    assert predicted and predicted[0]["label_name"] == demo.sample_label


def test_readyz_waited_for_the_demo_models(served: Service) -> None:
    """On a first start /readyz named the demo models until they answered; `served` waits on it alone."""
    assert served.readyz_at_start["status"] == "unavailable", served.readyz_at_start
    assert "demo_models" in served.readyz_at_start["problems"], served.readyz_at_start


def test_public_listing_and_health(served: Service) -> None:
    import requests

    assert requests.get(served.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(served.url + "/readyz", timeout=5).status_code == 200
    listing = served.get("/v0.7/recognition/public/").json()
    assert {item["id"] for item in listing["results"]} >= {d.key for d in DEMO_MODELS}
    assert requests.get(served.url + "/openapi.json", timeout=5).json()["openapi"].startswith("3.")


def test_restart_keeps_data_and_stops_cleanly(tmp_path_factory: pytest.TempPathFactory) -> None:
    data_dir = tmp_path_factory.mktemp("restart") / "data"
    service = start_service(data_dir, env={"PERCEPT_DEMO_MODELS": "false"})
    try:
        response = service.post(
            "/v0.7/recognition/specs/",
            json={"name": "kept", "outputs": [{"labels": {"labels": [{"id": 1, "name": "a"}]}}]},
        )
        assert response.status_code == 201, response.text
        spec_id = response.json()["id"]
    finally:
        assert stop_service(service) == 0
    again = start_service(data_dir, env={"PERCEPT_DEMO_MODELS": "false"})
    try:
        assert again.get(f"/v0.7/recognition/specs/{spec_id}/").json()["name"] == "kept"
    finally:
        assert stop_service(again) == 0


def test_bad_settings_fail_at_start_naming_the_variable(tmp_path_factory: pytest.TempPathFactory) -> None:
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "PERCEPT_MAX_BATCH_SIZE": "zero",
        "PERCEPT_DATA_DIR": str(tmp_path_factory.mktemp("bad")),
    }
    result = subprocess.run(
        [sys.executable, "-m", "percept.cli", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "PERCEPT_MAX_BATCH_SIZE" in result.stderr


def test_the_face_is_found_through_the_api(served: Service) -> None:
    """The real detector end to end: the box the API returns overlaps an independently derived face box."""
    from engine.zoo.faces import FACES
    from tests.unit.test_zoo import ASTRONAUT_FACE

    source = base64.b64encode(FACES.sample_image()).decode()
    response = served.post(
        "/v0.7/recognition/public/faces/inference", json={"inputs": [{"image": {"source": source}}]}
    )
    task = served.wait_task(response.json()["task_id"])
    (face,) = task["data"]["outputs"][0]["labels"]["predicted"]
    box = face["roi"]["bbox"]
    found = [box["xmin"] * 512, box["ymin"] * 512, box["xmax"] * 512, box["ymax"] * 512]
    left, top = max(found[0], ASTRONAUT_FACE[0]), max(found[1], ASTRONAUT_FACE[1])
    right, bottom = min(found[2], ASTRONAUT_FACE[2]), min(found[3], ASTRONAUT_FACE[3])
    overlap = max(0.0, right - left) * max(0.0, bottom - top)
    area = (found[2] - found[0]) * (found[3] - found[1])
    reference = (ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0]) * (ASTRONAUT_FACE[3] - ASTRONAUT_FACE[1])
    assert overlap / (area + reference - overlap) >= 0.5
