"""Job messages with the model reference's JSON rendered once per object and read once per distinct reference:
the same message as pydantic's own rendering, a model's JSON reused while the object lives, a new object
rendered afresh; a reader that knows a reference validates only the rest, and never trusts a digest."""

from __future__ import annotations

import gc
import json

import pytest
from pydantic import ValidationError

from schemas import job_wire as job_body
from schemas.job_wire import JobReader
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
        written = json.loads(body)
        assert written.pop("model_digest")
        assert written == json.loads(job.model_dump_json(exclude={"model_digest"}))
        assert InferenceJob.model_validate_json(body).model_dump(exclude={"model_digest"}) == job.model_dump(
            exclude={"model_digest"}
        )


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


def _without_digest(job: InferenceJob) -> dict[str, object]:
    return job.model_dump(exclude={"model_digest"})


def test_a_reader_reads_a_known_reference_once_and_the_rest_of_every_job() -> None:
    model, read = _model(), JobReader()
    first = read(job_body.job_body(_job(model)))
    second = read(
        job_body.job_body(_job(model, task_id="42", input_of=InputOf(task_id="40", index=1, count=2)))
    )
    assert second.model is first.model, "a known reference is reused, not validated again"
    assert second.task_id == "42" and second.input_of == InputOf(task_id="40", index=1, count=2)
    assert _without_digest(second) == _without_digest(_job(model, task_id="42", input_of=second.input_of))
    assert second.image.data == b"\xff\xd8\xff\x00 bytes \x01\x02"
    assert second.model_fields_set >= {"task_id", "owner", "model", "image", "input_of"}
    other = read(job_body.job_body(_job(_model("8"))))
    assert other.model.network_id == "8"


def test_a_digest_is_never_trusted_without_the_same_bytes() -> None:
    read = JobReader()
    known = job_body.job_body(_job(_model()))
    read(known)
    # Another model's reference behind the known one's digest: read in full, so the job runs its own model.
    forged = job_body.job_body(_job(_model("8")))
    digest = known[len(b'{"model_digest":"') :].split(b'"', 1)[0]
    forged = forged.replace(forged[len(b'{"model_digest":"') :].split(b'"', 1)[0], digest, 1)
    assert read(forged).model.network_id == "8"
    # Nor remembered under it: the known one still reads as itself.
    assert read(known).model.network_id == "7"


def test_a_job_written_another_way_is_read_in_full() -> None:
    read, job = JobReader(), _job(_model())
    assert _without_digest(read(job.model_dump_json().encode())) == _without_digest(job)
    spaced = json.dumps(json.loads(job_body.job_body(job)), indent=1).encode()
    assert _without_digest(read(spaced)) == _without_digest(job)


@pytest.mark.parametrize(
    "change",
    [
        lambda body: body.replace(b'"task_id":"41"', b'"task_id":41'),
        lambda body: body.replace(b'"owner":"tenant",', b""),
        lambda body: body.replace(b'"max_predictions":5', b'"max_predictions":5,"extra":1'),
        lambda body: body[:-1],
    ],
)
def test_a_malformed_job_behind_a_known_reference_is_refused_like_any_other(change: object) -> None:
    read, body = JobReader(), job_body.job_body(_job(_model()))
    read(body)
    assert callable(change)
    with pytest.raises(ValidationError):
        read(change(body))


def test_the_reader_keeps_a_bounded_number_of_references() -> None:
    read = JobReader(capacity=2)
    bodies = [job_body.job_body(_job(_model(str(index)))) for index in range(3)]
    first_reads = [read(body).model for body in bodies]
    assert read(bodies[2]).model is first_reads[2] and read(bodies[1]).model is first_reads[1]
    assert read(bodies[0]).model is not first_reads[0], "the least recently read reference was let go"
