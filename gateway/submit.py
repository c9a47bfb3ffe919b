"""Accepting work: record the job (outbox) and its pending task, hand the job to the broker, answer with the
task id (and, asked to wait, the finished task). A gateway that dies at any point leaves either nothing the
client was told about, or a recorded job that the consumers' maintenance publishes (store.outbox)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel

from broker.port import BrokerUnavailable, QueueFull
from broker.topology import INFERENCE, QueueSpec
from gateway import idempotency, render
from gateway.context import BROKER, CONFIG, ENDPOINTS, OUTBOX_CLEANER, STORE, TASK_IDS, WAITERS, owner_of
from gateway.errors import InvalidInput, Overloaded, Unavailable
from gateway.images import job_image
from gateway.long_poll import read_tasks, wait_param
from gateway.multi_input import input_jobs, multi_input_tasks, publish_inputs
from gateway.routes.common import ok
from schemas.documents import TaskDoc, TaskKind, TaskOutcome, TaskStatus
from schemas.inference import InferenceRequest, NetworkInferenceRequest
from schemas.job_wire import job_body
from schemas.messages import InferenceJob, JobImage, ModelRef
from store import outbox
from store.hooks import task_hook
from store.port import OUTBOX, TASK_HOOKS, TASKS, Batch

# A full queue drains at the consumers' pace, which the gateway does not know: a few seconds spreads retries.
QUEUE_FULL_RETRY_S = 5


@dataclass(frozen=True)
class Outgoing:
    queue: QueueSpec
    unsent: outbox.Unsent


def outgoing(queue: QueueSpec, *, owner: str, jobs: Sequence[tuple[str, str, BaseModel]]) -> list[Outgoing]:
    """Each (message id, task id, job), ready to be recorded with its task by `accept`."""
    return [
        Outgoing(
            queue,
            outbox.entry_for(
                queue=queue.name,
                message_id=message_id,
                task_id=task_id,
                task_owner=owner,
                body=job_body(job) if isinstance(job, InferenceJob) else job.model_dump_json().encode(),
            ),
        )
        for message_id, task_id, job in jobs
    ]


async def accept(
    request: web.Request,
    *,
    jobs: Sequence[Outgoing],
    tasks: Sequence[TaskDoc],
    hooked: Sequence[TaskDoc] = (),
    extra: Sequence[Batch] = (),
) -> None:
    """One write for everything a submission records, jobs first (the outbox), then `extra` (what the tasks
    are about), the tasks, and the webhook hooks of the `hooked` tasks. Publish the jobs after it."""
    store = request.app[STORE]
    await outbox.store_large_bodies(store, [item.unsent for item in jobs])
    hooks = [hook for task in hooked if (hook := await task_hook(store, task, request.app[ENDPOINTS]))]
    await store.insert_together(
        [(OUTBOX, [item.unsent.entry for item in jobs]), *extra, (TASKS, tasks), (TASK_HOOKS, hooks)]
    )


async def publish_staged(request: web.Request, outgoing: Outgoing) -> None:
    """The task is recorded; if the broker will not confirm its job, the task ends in error and the client is
    told to retry. The outbox record goes once the job is queued or its task has ended, not before."""
    entry, cleaner = outgoing.unsent.entry, request.app[OUTBOX_CLEANER]
    try:
        await request.app[BROKER].publish(outgoing.queue.name, outgoing.unsent.body, message_id=entry.id)
    except BrokerUnavailable as error:
        reason = f"could not be queued: {error}"
        await request.app[STORE].finish_tasks(
            [TaskOutcome(task_id=entry.task_id, status=TaskStatus.ERROR, error=reason)]
        )
        cleaner.confirmed(entry)
        if isinstance(error, QueueFull):
            raise Overloaded(
                "the job queue is full; retry later", retry_after_s=QUEUE_FULL_RETRY_S
            ) from error
        raise Unavailable("the job queue is unavailable; retry shortly") from error
    cleaner.confirmed(entry)


def _check_count(request: web.Request, inference: InferenceRequest) -> None:
    limit = request.app[CONFIG].max_inputs
    if len(inference.inputs) > limit:
        raise InvalidInput(
            f"at most {limit} inputs per request, got {len(inference.inputs)}: split them over requests",
            field="inputs",
        )


async def submit_inference(
    request: web.Request, model: ModelRef, inference: InferenceRequest
) -> web.Response:
    """Answers `{"task_id"}`; with `?wait=SECONDS`, also `"task"`: the task once finished (or as it is when
    the wait runs out), as `GET /v0.7/tasks/{id}/` would show it."""
    wait = wait_param(request)
    _check_count(request, inference)
    max_bytes = request.app[CONFIG].max_inline_image_bytes
    images = [
        job_image(item.image, field=f"inputs[{index}].image", max_bytes=max_bytes)
        for index, item in enumerate(inference.inputs)
    ]
    owner = owner_of(request)
    key = idempotency.presented_key(request)
    task_id = await request.app[TASK_IDS].next()
    if key is not None:
        print_ = idempotency.fingerprint(request, inference.model_dump_json().encode())
        earlier = await idempotency.claim(request, owner=owner, key=key, print_=print_, task_id=task_id)
        if earlier is not None:
            if not wait:
                return ok({"task_id": earlier})
            return _accepted(earlier, await read_tasks(request, [earlier], wait=wait))
    job = InferenceJob(
        task_id=task_id,
        owner=owner,
        model=model,
        image=images[0],
        show_discarded=inference.show_discarded,
        max_predictions=inference.max_predictions,
        output_layers=inference.output_layers if isinstance(inference, NetworkInferenceRequest) else None,
    )
    if not wait:
        await _submit(request, job, images, inference.callback_url, key=key)
        return ok({"task_id": task_id})
    # Watched before the job is published: the event cannot come first, and one read after it is enough.
    with request.app[WAITERS].watch([task_id]) as waiting:
        deadline = asyncio.get_running_loop().time() + wait
        await _submit(request, job, images, inference.callback_url, key=key)
        await waiting.until_over(deadline)
    return _accepted(task_id, await request.app[STORE].get_many(TASKS, [task_id], owners=[owner]))


def _accepted(task_id: str, docs: Sequence[TaskDoc]) -> web.Response:
    return ok({"task_id": task_id, "task": render.task(docs[0])} if docs else {"task_id": task_id})


async def _submit(
    request: web.Request,
    job: InferenceJob,
    images: Sequence[JobImage],
    callback_url: str | None,
    *,
    key: str | None,
) -> None:
    """Record the task(s) and publish the job(s); the task's id is the job's."""
    owner, task_id = job.owner, job.task_id
    try:
        if len(images) == 1:
            task = TaskDoc(id=task_id, owner=owner, kind=TaskKind.INFERENCE, callback_url=callback_url)
            staged = outgoing(INFERENCE, owner=owner, jobs=[(task_id, task_id, job)])
            await accept(request, jobs=staged, tasks=[task], hooked=[task])
            await publish_staged(request, staged[0])
        else:
            jobs = input_jobs(job, images)
            staged = outgoing(
                INFERENCE, owner=owner, jobs=[(each.task_id, each.task_id, each) for each in jobs]
            )
            tasks = multi_input_tasks(
                task_id=task_id, owner=owner, inputs=len(images), callback_url=callback_url
            )
            # Only the parent is hooked: webhooks announce the caller's task, not its inputs.
            await accept(request, jobs=staged, tasks=tasks, hooked=tasks[:1])
            by_task = {item.unsent.entry.task_id: item for item in staged}
            await publish_inputs(
                request, tasks[0], jobs, lambda each: publish_staged(request, by_task[each.task_id])
            )
    except Unavailable:
        if key is not None:
            await idempotency.release(request, owner=owner, key=key)
        raise
