"""The webhook consumer, on its own queue: triggers fan out into deliveries; each delivery is one attempt.

A failed attempt is recorded and its retry published as a new, delayed message (the broker's delay queues),
so a slow or dead receiver holds one prefetch slot for at most one timeout, never the queue. Every attempt
is stored before its message is acked; a crash in between repeats the attempt under the same `webhook-id`.

Slots are shared fairly (consumers.webhook_gate): an endpoint with its share of attempts in flight, or cut
off after attempts in a row without an answer, gets its next delivery put back with a delay, unattempted
and unrecorded, so one dead receiver cannot hold every slot while the others wait behind its timeouts.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import structlog
from pydantic import TypeAdapter

from broker.port import Broker, Delivery
from broker.topology import WEBHOOKS
from consumers.config import ConsumerConfig
from consumers.runner import parse_or_dead_letter, settle
from consumers.signing import signed_headers
from consumers.webhook_events import body_of, event_of, message_id
from consumers.webhook_gate import Deferral, EndpointGate
from consumers.webhook_sender import Sent, WebhookSender
from schemas.common import utc_now
from schemas.documents import HOOKS_OWNER, AttemptResult, WebhookAttemptDoc
from schemas.webhooks import HookedTask, WebhookDelivery, WebhookJob, WebhookTrigger
from store.port import TASK_HOOKS, TASKS, WEBHOOK_ATTEMPTS, WEBHOOK_ENDPOINTS, DuplicateId, Store
from store.secrets import account_secret

log = structlog.get_logger("webhooks")

_JOB: TypeAdapter[WebhookTrigger | WebhookDelivery] = TypeAdapter(WebhookJob)
MAX_ENDPOINTS = 100  # per tenant; more would be a misuse, and each is one message per event
JITTER = 0.2  # each retry delay is its scheduled value ±20%, so retries of many deliveries spread out


class WebhookWorker:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        sender: WebhookSender,
        *,
        config: ConsumerConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`config.webhook_retry_schedule[i]` is the delay before attempt i + 2; after all of them a
        delivery fails."""
        self._store = store
        self._broker = broker
        self._sender = sender
        self._schedule = tuple(config.webhook_retry_schedule)
        self._clock = clock
        self._gate = EndpointGate(
            max_in_flight=config.webhook_endpoint_in_flight,
            failures=config.webhook_circuit_failures,
            open_s=config.webhook_circuit_open_s,
        )

    async def handle(self, delivery: Delivery) -> None:
        job = await parse_or_dead_letter(delivery, _JOB.validate_json)
        if job is None:
            return

        async def give_up(reason: str) -> None:
            log.error("webhook_job_gave_up", reason=reason, message_id=delivery.message_id)

        await settle(
            delivery,
            lambda: self._run(job),
            delivery_limit=WEBHOOKS.delivery_limit,
            give_up=give_up,
            store=self._store,
        )

    async def _run(self, job: WebhookTrigger | WebhookDelivery) -> None:
        if isinstance(job, WebhookTrigger):
            await self._fan_out(job.tasks)
            return
        with structlog.contextvars.bound_contextvars(
            task_id=job.task_id, webhook_id=job.message_id, attempt=job.attempt
        ):
            await self._attempt(job)

    async def _fan_out(self, hooked: Sequence[HookedTask]) -> None:
        by_tenant: dict[str, list[HookedTask]] = defaultdict(list)
        for hook in hooked:
            by_tenant[hook.tenant].append(hook)
        for tenant, hooks in by_tenant.items():
            callbacks = {hook.task_id: hook.callback_url for hook in hooks}
            tasks = await self._store.get_many(TASKS, list(callbacks), owners=[tenant])
            endpoints = await self._store.find(
                WEBHOOK_ENDPOINTS, owners=[tenant], where={"enabled": True}, limit=MAX_ENDPOINTS
            )
            for task in tasks:
                event = event_of(task)
                if event is None:
                    continue  # triggers follow the stored outcome: only a deleted-and-reused id gets here
                callback = callbacks[task.id]
                targets: list[tuple[str | None, str]] = [(None, callback)] if callback else []
                targets += [(e.id, e.url) for e in endpoints.items if event in e.events]
                body = body_of(task, event)
                for endpoint_id, url in targets:
                    job = WebhookDelivery(
                        message_id=message_id(task.id, endpoint_id),
                        tenant=tenant,
                        endpoint_id=endpoint_id,
                        url=url,
                        event=event,
                        task_id=task.id,
                        body=body,
                    )
                    await self._broker.publish(
                        WEBHOOKS.name, job.model_dump_json().encode(), message_id=f"{job.message_id}.1"
                    )
        # Only once every delivery is queued: a redelivered trigger carries all it needs without the hooks.
        for hook in hooked:
            await self._store.delete(TASK_HOOKS, hook.task_id, owner=HOOKS_OWNER)

    async def _attempt(self, job: WebhookDelivery) -> None:
        ticket = self._gate.acquire(_endpoint_key(job))
        if isinstance(ticket, Deferral):
            await self._defer(job, ticket)
            return
        answered: bool | None = None
        try:
            if job.endpoint_id is None:
                url, secret = job.url, await account_secret(self._store, job.tenant)
            else:
                endpoint = await self._store.get(WEBHOOK_ENDPOINTS, job.endpoint_id, owners=[job.tenant])
                if endpoint is None or not endpoint.enabled:
                    log.info("webhook_dropped", reason="endpoint deleted or disabled")
                    return
                url, secret = endpoint.url, endpoint.secret  # its current URL, should it have been edited
            headers = signed_headers(secret, job.message_id, int(self._clock()), job.body)
            sent = await self._sender.post(url, job.body, headers)
            # A refused address was never contacted: it says nothing of whether the receiver answers.
            answered = sent.status_code is not None or sent.refused
        finally:
            self._gate.release(ticket, answered=answered)
        result, retry_in = self._judge(job, sent)
        if result is AttemptResult.GONE and job.endpoint_id is not None:
            await self._store.update(
                WEBHOOK_ENDPOINTS,
                job.endpoint_id,
                owner=job.tenant,
                changes={
                    "enabled": False,
                    "disabled_reason": "the receiver answered 410 Gone",
                    "update_date": utc_now(),
                },
            )
        await self._record(job, url, sent, result, retry_in)
        log.info("webhook_attempted", result=result.value, status=sent.status_code, ms=sent.duration_ms)
        if retry_in is not None:
            retry = job.model_copy(update={"attempt": job.attempt + 1})
            await self._broker.publish(
                WEBHOOKS.name,
                retry.model_dump_json().encode(),
                message_id=f"{job.message_id}.{retry.attempt}",
                delay_s=retry_in,
            )

    async def _defer(self, job: WebhookDelivery, deferral: Deferral) -> None:
        """The same attempt again later: same message, same attempt number, nothing recorded."""
        await self._broker.publish(
            WEBHOOKS.name,
            job.model_dump_json().encode(),
            message_id=f"{job.message_id}.{job.attempt}",
            delay_s=deferral.delay_s,
        )
        log.info("webhook_deferred", reason=deferral.reason, delay_s=round(deferral.delay_s, 3))

    def _judge(self, job: WebhookDelivery, sent: Sent) -> tuple[AttemptResult, float | None]:
        """The attempt's result, and the delay before the next attempt if there is one."""
        if sent.refused:
            return AttemptResult.REFUSED, None  # the address will not become allowed by waiting
        if sent.status_code is not None and 200 <= sent.status_code < 300:
            return AttemptResult.DELIVERED, None
        if sent.status_code == 410:
            return AttemptResult.GONE, None
        if job.attempt > len(self._schedule):
            return AttemptResult.FAILED, None
        delay = self._schedule[job.attempt - 1] * random.uniform(1 - JITTER, 1 + JITTER)
        return AttemptResult.RETRYING, delay

    async def _record(
        self, job: WebhookDelivery, url: str, sent: Sent, result: AttemptResult, retry_in: float | None
    ) -> None:
        attempt = WebhookAttemptDoc(
            id=f"{job.message_id}.{job.attempt}",
            owner=job.tenant,
            message_id=job.message_id,
            endpoint_id=job.endpoint_id,
            task_id=job.task_id,
            event=job.event,
            url=url,
            attempt=job.attempt,
            result=result,
            status_code=sent.status_code,
            error=sent.error if sent.error is not None else _status_error(sent.status_code),
            duration_ms=sent.duration_ms,
            next_attempt_s=None if retry_in is None else round(retry_in, 3),
            date=utc_now(),
        )
        try:
            await self._store.insert(WEBHOOK_ATTEMPTS, attempt)
        except DuplicateId:
            log.info("webhook_attempt_repeated")  # redelivered after a crash: the first record stands


def _status_error(status: int | None) -> str | None:
    if status is None or 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return f"HTTP {status}: redirects are not followed"
    return f"HTTP {status}"


def _endpoint_key(job: WebhookDelivery) -> str:
    """What the cap counts by: a registered endpoint, or a callback URL's receiver (scheme, host, port)
    whatever its path and tenant, since callback URLs often differ per task only in their path or query."""
    if job.endpoint_id is not None:
        return f"endpoint:{job.endpoint_id}"
    try:
        url = urlsplit(job.url)
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:  # an invalid port: the attempt will be refused, the key hardly matters
        return f"callback:{job.url}"
    return f"callback:{url.scheme}://{url.hostname}:{port}"
