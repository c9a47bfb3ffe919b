"""Job messages with the model reference's JSON rendered once per object: the same message as pydantic's own
rendering, a model's JSON reused while the object lives, and a new object rendered afresh."""

from __future__ import annotations

import gc
import json

from gateway import job_body
from schemas.messages import InferenceJob, InputOf, JobImage, ModelRef

PREPROCESSING = {
    "inputs": [{"tensor_name": "image", "image": {"target_size": "224x224", "pixel_scaling": 2.0}}],
}
LABELS = [{"id": index, "name": f"class \u00e9 {index}"} for index in range(50)]


def _model(network_id: str = "7") -> ModelRef:
    return ModelRef.model_validate(
        {
            "network_id": network_id,
            "network_files": ["saved_model.pb"],
            "preprocessing": PREPROCESSING,
            "version_id": "3",
            "outputs": [{"labels": {"roi": "NONE", "labels": LABELS}}],
            "post_processings": [
                {"classification": {"output_tensor": "probabilities", "thresholds": [0.5] * len(LABELS)}}
            ],
        }
    )


def _job(model: ModelRef, **changes: object) -> InferenceJob:
    return InferenceJob.model_validate(
        {
            "task_id": "41",
            "owner": "tenant",
            "model": model,
            "image": JobImage(data=b"\xff\xd8\xff\x00 bytes \x01\x02"),
            "max_predictions": 5,
            **changes,
        }
    )


def test_the_message_is_pydantics_own_json_object() -> None:
    model = _model()
    for job in (
        _job(model),
        _job(model, input_of=InputOf(task_id="40", index=1, count=2), output_layers=["a"], reply_to="q"),
        _job(model, image=JobImage(url="http://example.test/a.jpg", crop_uniform_background=True)),
    ):
        body = job_body.job_body(job)
        assert json.loads(body) == json.loads(job.model_dump_json())
        assert InferenceJob.model_validate_json(body) == job


def test_a_models_json_is_rendered_once_per_object() -> None:
    first, twin = _model(), _model()
    rendered = job_body.model_json(first)
    assert job_body.model_json(first) is rendered
    # An equal but distinct object (a fresh resolution) is rendered on its own.
    assert job_body.model_json(twin) is not rendered and job_body.model_json(twin) == rendered
    other = _model("8")
    assert json.loads(job_body.job_body(_job(other)))["model"]["network_id"] == "8"


def test_entries_go_with_their_objects() -> None:
    before = len(job_body._RENDERED)
    model = _model()
    job_body.model_json(model)
    assert len(job_body._RENDERED) == before + 1
    del model
    gc.collect()
    assert len(job_body._RENDERED) == before
