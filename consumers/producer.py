"""Queue producers' requests: authenticate, validate, resolve the model, record a task, queue a job.

The job is an ordinary `InferenceJob` on `percept.inference`, so requests from producers and from HTTP share
batching and scale-out. A request that can never be run (no or unknown API key, malformed, unknown version)
creates no task: it is dead-lettered to `percept.requests.dead` with its reason, and refused in a reply when
it asked for one. Anything else that fails (store or broker away) is retried by the runner.

A request with a `message_id` creates one task however often it is delivered: the task is recorded together
with a claim on the message id (as the gateway's `Idempotency-Key`), and a redelivery finds the claim and
queues that task's job again if it is still pending.
"""

from __future__ import annotations

import hashlib

import structlog
from pydantic import ValidationError

from broker.backpressure import publish_when_room
from broker.port import Broker, BrokerUnavailable, Delivery
from broker.topology import INFERENCE, REQUESTS
from consumers.runner import PermanentFailure, settle
from schemas.documents import IdempotencyDoc, TaskDoc, TaskKind, TaskOutcome, TaskStatus
from schemas.job_wire import job_body
from schemas.messages import InferenceJob, ModelRef
from schemas.producer import API_KEY_HEADER, ProducerReply, ProducerRequest
from store.api_keys import KeyCache
from store.hooks import EndpointPresence, task_hook
from store.model_refs import NotRunnable, spec_model, version_model
from store.port import IDEMPOTENCY, TASK_HOOKS, TASKS, DuplicateId, Store

log = structlog.get_logger("producer")

# Replies must not feed Percept's own queues: a reply there would be read as work.
_OWN_QUEUES = "percept."


class Refused(Exception):
    """The request can never be run; the message says why, to the producer and in the dead letter."""


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "message"
    return f"invalid request: {where}: {first['msg']}"


def _api_key(delivery: Delivery) -> str:
    value = delivery.headers.get(API_KEY_HEADER)
    key = value.decode(errors="replace") if isinstance(value, bytes) else value
    if not isinstance(key, str) or not key:
        raise Refused(f"not authenticated: no API key in the {API_KEY_HEADER!r} header")
    return key


def _claim(owner: str, delivery: Delivery) -> IdempotencyDoc | None:
    if not delivery.message_id:
        return None
    claim_id = IdempotencyDoc.id_for(owner, f"message:{delivery.message_id}")
    fingerprint = hashlib.sha256(delivery.body).hexdigest()
    return IdempotencyDoc(id=claim_id, owner=owner, task_id="", fingerprint=fingerprint)


def _parse(delivery: Delivery) -> ProducerRequest:
    if delivery.reply_to is not None and delivery.reply_to.startswith(_OWN_QUEUES):
        raise Refused(f"reply_to must not name a Percept queue ({delivery.reply_to})")
    try:
        return ProducerRequest.model_validate_json(delivery.body)
    except ValidationError as error:
        raise Refused(_first_error(error)) from None


class ProducerWorker:
    def __init__(self, store: Store, broker: Broker, keys: KeyCache) -> None:
        self._store = store
        self._broker = broker
        self._keys = keys
        self._endpoints = EndpointPresence()

    async def handle(self, delivery: Delivery) -> None:
        with structlog.contextvars.bound_contextvars(
            message_id=delivery.message_id, delivery_count=delivery.delivery_count
        ):
            await settle(
                delivery,
                lambda: self._accept(delivery),
                delivery_limit=REQUESTS.delivery_limit,
                store=self._store,
                give_up=lambda reason: self._give_up(delivery, reason),
            )

    async def _accept(self, delivery: Delivery) -> None:
        try:
            # The key first: an unauthenticated message gets no further work, not even parsing.
            owner = await self._keys.owner(self._store, _api_key(delivery))
            if owner is None:
                raise Refused("not authenticated: invalid API key")
            request = _parse(delivery)
            model = await self._model(owner, request)
        except Refused as refusal:
            await self._refuse(delivery, str(refusal))
            raise PermanentFailure(str(refusal)) from None
        task = await self._record(delivery, owner)
        if task is None:
            return  # a redelivery of a request whose task has ended: answered already, or again just now
        job = InferenceJob(
            task_id=task.id,
            owner=owner,
            model=model,
            image=request.image.job_image(),
            show_discarded=request.show_discarded,
            max_predictions=request.max_predictions,
            reply_to=delivery.reply_to,
            correlation_id=delivery.correlation_id,
        )
        try:
            # A full inference queue holds the request (backpressure on the requests queue) for a while.
            await publish_when_room(self._broker, INFERENCE.name, job_body(job), message_id=task.id)
        except BrokerUnavailable as error:
            if delivery.message_id:
                raise  # the task stays pending: the request's next delivery finds it and queues its job
            # Without a message id a redelivery cannot find this task: it must not stay pending forever.
            outcome = TaskOutcome(
                task_id=task.id, status=TaskStatus.ERROR, error=f"could not be queued: {error}"
            )
            await self._store.finish_tasks([outcome])
            raise
        log.info("request_accepted", task_id=task.id, tenant=owner)

    async def _record(self, delivery: Delivery, owner: str) -> TaskDoc | None:
        """The request's task: new, or (a redelivery) the pending one its message id claimed; None when
        that task has already ended."""
        task = TaskDoc(id=await self._store.next_id("tasks"), owner=owner, kind=TaskKind.INFERENCE)
        claim = _claim(owner, delivery)
        # The tenant's webhook endpoints hear of it like any other task.
        hook = await task_hook(self._store, task, self._endpoints)
        try:
            await self._store.insert_together(
                [
                    (IDEMPOTENCY, [claim.model_copy(update={"task_id": task.id})] if claim else []),
                    (TASKS, [task]),
                    (TASK_HOOKS, [hook] if hook else []),
                ]
            )
            return task
        except DuplicateId:
            if claim is None:
                raise
        earlier = await self._store.get(IDEMPOTENCY, claim.id, owners=[owner])
        if earlier is None:
            raise RuntimeError("the message's claim vanished; retrying")  # the runner requeues
        if earlier.fingerprint != claim.fingerprint:
            refusal = f"message_id {delivery.message_id!r} was already used for a different request"
            await self._refuse(delivery, refusal)
            raise PermanentFailure(refusal)
        claimed = await self._store.get(TASKS, earlier.task_id, owners=[owner])
        if claimed is None:  # MongoDB wrote the claim, not the task, before the last delivery stopped
            claimed = TaskDoc(id=earlier.task_id, owner=owner, kind=TaskKind.INFERENCE)
            await self._store.insert(TASKS, claimed)
        if claimed.status is TaskStatus.PENDING:
            log.info("request_redelivered", task_id=claimed.id)
            return claimed
        if delivery.reply_to is not None:
            reply = ProducerReply.of_task(claimed.id, claimed.status, data=claimed.data, error=claimed.error)
            await self._broker.reply(
                delivery.reply_to, reply.model_dump_json().encode(), correlation_id=delivery.correlation_id
            )
        return None

    async def _model(self, owner: str, request: ProducerRequest) -> ModelRef:
        try:
            if request.version_id is not None:
                return await version_model(self._store, owner, request.version_id)
            assert request.spec_id is not None  # the model's validator wants exactly one
            return await spec_model(self._store, owner, request.spec_id)
        except NotRunnable as error:
            raise Refused(str(error)) from None

    async def _give_up(self, delivery: Delivery, reason: str) -> None:
        """The request failed at every delivery: refuse it, and end the task its message id claimed."""
        await self._refuse(delivery, reason)
        try:
            owner = await self._keys.owner(self._store, _api_key(delivery))
        except Refused:
            return
        claim = _claim(owner, delivery) if owner else None
        earlier = await self._store.get(IDEMPOTENCY, claim.id, owners=[claim.owner]) if claim else None
        if earlier is not None:
            outcome = TaskOutcome(task_id=earlier.task_id, status=TaskStatus.ERROR, error=reason)
            await self._store.finish_tasks([outcome])

    async def _refuse(self, delivery: Delivery, reason: str) -> None:
        """Tell a producer that asked for a reply why no task was created."""
        reply_to = delivery.reply_to
        if reply_to is None or reply_to.startswith(_OWN_QUEUES):
            return
        reply = ProducerReply.refused(reason)
        await self._broker.reply(
            reply_to, reply.model_dump_json().encode(), correlation_id=delivery.correlation_id
        )
