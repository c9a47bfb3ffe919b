"""Clarifai `PostModelOutputs`: synchronous predictions over the same queue as every other inference.

A Clarifai model is a Percept spec (its current version, or the version named in the path). Each input
becomes an ordinary inference task and job; the request waits for all of them, woken by task events, up to
DEADLINE_S, then reads them in one store call. The `user_id` and `app_id` path parts are accepted and
ignored: the API key alone names the tenant.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from broker.topology import INFERENCE
from gateway import clarifai_shape
from gateway.clarifai_shape import Code
from gateway.context import CONFIG, STORE, TASK_IDS, WAITERS, owner_of
from gateway.errors import ApiError, InvalidInput, NotFound
from gateway.images import job_image
from gateway.routes.common import add, parse, path_id
from gateway.routes.versions import model_ref_for_version
from gateway.submit import accept, outgoing, publish_staged
from schemas.clarifai import ClarifaiInput, OutputConfig, PostModelOutputsRequest
from schemas.common import b64decode_strict, iso, utc_now
from schemas.documents import PUBLIC_OWNER, SpecDoc, TaskDoc, TaskKind, TaskStatus, VersionDoc
from schemas.inference import ImageInput, InferenceResult
from schemas.messages import InferenceJob, JobImage, ModelRef
from schemas.specs import RoiKind
from store.port import SPECS, TASKS, VERSIONS

DEADLINE_S = 30.0  # how long one call waits for its inputs; unfinished ones answer TRY_AGAIN
_MIN_PREDICTIONS = 100  # regions per detection output, as the Deepomatic surface's default


@dataclass
class _Input:
    """One input of the call: its echo, and either the image to run or why it cannot run."""

    id: str
    echo: dict[str, Any]
    image: JobImage | None = None
    failure: str | None = None
    task_id: str | None = None


async def _target(request: web.Request) -> tuple[SpecDoc, VersionDoc]:
    model_id = path_id(request, "model_id")
    store = request.app[STORE]
    spec = await store.get(SPECS, model_id, owners=[owner_of(request), PUBLIC_OWNER])
    if spec is None:
        raise NotFound(f"model {model_id} does not exist", field="model_id")
    version_id = request.match_info.get("version_id")
    if version_id is None:
        if spec.current_version_id is None:
            raise NotFound(f"model {model_id} has no version yet", field="version_id")
        version_id = str(spec.current_version_id)
    version = await store.get(VERSIONS, version_id, owners=[spec.owner])
    if version is None or version.spec_id != spec.id:
        raise NotFound(f"model {model_id} has no version {version_id}", field="version_id")
    return spec, version


def _source(item: ClarifaiInput, field: str) -> str | bytes:
    image = item.data.image
    url = image.url if image else None
    encoded = image.base64 if image else None
    if bool(url) == bool(encoded):
        raise ValueError(f"{field}: give exactly one of url and base64")
    if url:
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"{field}.url: only http and https URLs can be fetched")
        return url
    assert encoded is not None
    try:
        return b64decode_strict("".join(encoded.split()))
    except (binascii.Error, ValueError):
        raise ValueError(f"{field}.base64: not valid base64") from None


def _input(item: ClarifaiInput, index: int, *, max_bytes: int) -> _Input:
    url = item.data.image.url if item.data.image else None
    # The echo leaves the base64 payload out: the caller has it, and it can be megabytes.
    echo: dict[str, Any] = {"image": {"url": url} if url else {}} if item.data.image else {}
    prepared = _Input(id=item.id or uuid.uuid4().hex, echo=echo)
    field = f"inputs[{index}].data.image"
    try:
        prepared.image = job_image(ImageInput(source=_source(item, field)), field=field, max_bytes=max_bytes)
    except ValueError as error:
        prepared.failure = str(error)
    except ApiError as error:
        prepared.failure = f"{field}: {error.reason}"
    return prepared


def _job(task_id: str, owner: str, model: ModelRef, image: JobImage) -> InferenceJob:
    classifies = any(output.labels.roi is RoiKind.NONE for output in model.outputs)
    labels = max(len(output.labels.labels) for output in model.outputs)
    # Concepts cover every label, predicted or not: the output_config filters them here, not the consumer.
    return InferenceJob(
        task_id=task_id,
        owner=owner,
        model=model,
        image=image,
        show_discarded=classifies,
        max_predictions=max(_MIN_PREDICTIONS, labels),
    )


async def _run(request: web.Request, model: ModelRef, inputs: list[_Input]) -> dict[str, TaskDoc]:
    """Submits the runnable inputs and waits for them; their tasks by id, as they are at the end."""
    runnable = [item for item in inputs if item.image is not None]
    if not runnable:
        return {}
    owner = owner_of(request)
    ids = await request.app[TASK_IDS].take(len(runnable))
    jobs = []
    for item, task_id in zip(runnable, ids, strict=True):
        assert item.image is not None
        item.task_id = task_id
        jobs.append(_job(task_id, owner, model, item.image))
    staged = outgoing(INFERENCE, owner=owner, jobs=[(job.task_id, job.task_id, job) for job in jobs])
    tasks = [TaskDoc(id=task_id, owner=owner, kind=TaskKind.INFERENCE) for task_id in ids]
    await accept(request, jobs=staged, tasks=tasks, hooked=tasks)
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    # Watched before publishing, so no finish can go unnoticed and one read at the end is enough.
    with request.app[WAITERS].watch(ids) as waiting:
        await asyncio.gather(*(publish_staged(request, item) for item in staged))
        await waiting.until_over(deadline)
    docs = await request.app[STORE].get_many(TASKS, ids, owners=[owner])
    return {doc.id: doc for doc in docs}


def _result(
    item: _Input, task: TaskDoc | None, model: ModelRef, config: OutputConfig
) -> tuple[Code, str | None, dict[str, Any] | None]:
    """The output's code, status details and data."""
    if item.failure is not None:
        return Code.INPUT_DOWNLOAD_FAILED, item.failure, None
    if task is None:
        return Code.INTERNAL_SERVER_ISSUE, "the input's task is gone", None
    if task.status is TaskStatus.PENDING:
        return Code.TRY_AGAIN, f"not finished within {DEADLINE_S:g} s; retry the call", None
    if task.status is TaskStatus.ERROR:
        # The task's reason says which: fetch refused or failed, image undecodable or too large.
        return Code.INPUT_DOWNLOAD_FAILED, task.error or "the image could not be processed", None
    try:
        result = InferenceResult.model_validate(task.data)
    except ValidationError:
        # A consumer of another release wrote a shape this gateway does not know.
        return Code.INTERNAL_SERVER_ISSUE, f"task {task.id} holds an unreadable result", None
    return Code.SUCCESS, None, clarifai_shape.output_data(result, model.outputs, config)


async def _body(request: web.Request) -> PostModelOutputsRequest:
    """JSON whatever the Content-Type says: the vendor's API takes nothing else, and `curl -d` says form."""
    try:
        fields = json.loads(await request.read())
    except (ValueError, RecursionError) as error:
        # As in gateway/bodies.py: bad JSON or UTF-8, too many digits, too deep.
        raise InvalidInput(f"not valid JSON: {error}", field="body") from None
    if not isinstance(fields, dict):
        raise InvalidInput("must be a JSON object", field="body")
    return parse(PostModelOutputsRequest, fields)


async def post_model_outputs(request: web.Request) -> web.Response:
    body = await _body(request)
    spec, version = await _target(request)
    model = await model_ref_for_version(request, version, spec=spec)
    max_bytes = request.app[CONFIG].max_inline_image_bytes
    inputs = [_input(item, index, max_bytes=max_bytes) for index, item in enumerate(body.inputs)]
    tasks = await _run(request, model, inputs)
    model_echo = {
        "id": request.match_info["model_id"],
        "name": spec.name,
        "model_version": {"id": version.id},
    }
    codes: list[Code] = []
    outputs: list[dict[str, Any]] = []
    for item in inputs:
        task = tasks.get(item.task_id) if item.task_id else None
        code, details, data = _result(item, task, model, body.output_config)
        codes.append(code)
        output: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "status": clarifai_shape.status(code, details),
            "created_at": iso(task.date_created if task else utc_now()),
            "model": model_echo,
            "input": {"id": item.id, "data": item.echo},
        }
        if data is not None:
            output["data"] = data
        outputs.append(output)
    response_status, http_status = clarifai_shape.overall(codes)
    return web.json_response({"status": response_status, "outputs": outputs}, status=http_status)


def setup(app: web.Application) -> None:
    for prefix in ("/v2", "/v2/users/{user_id}/apps/{app_id}"):
        add(app, "POST", f"{prefix}/models/{{model_id}}/outputs", post_model_outputs)
        add(app, "POST", f"{prefix}/models/{{model_id}}/versions/{{version_id}}/outputs", post_model_outputs)
