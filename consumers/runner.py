"""The one place a message's fate is decided: ack after the result is stored, requeue, or dead-letter.

Handlers return normally when the outcome (success or a user-facing error) is stored, raise
`PermanentFailure` for messages that can never succeed, and let anything else propagate: it is retried
until the queue's delivery limit, then the task ends in `error` and the message is dead-lettered. A dead
letter carries its reason (topology.DEAD_REASON_HEADER), for whoever inspects the dead-letter queue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from pydantic import ValidationError

from broker.port import Delivery

log = structlog.get_logger("runner")


class PermanentFailure(Exception):
    """The message can never succeed (malformed, unknown kind): dead-letter it now."""


GiveUp = Callable[[str], Awaitable[None]]
M = TypeVar("M")


async def parse_or_dead_letter(delivery: Delivery, parse: Callable[[bytes], M]) -> M | None:
    """The message as its model, or None once a malformed one has been dead-lettered with the reason."""
    try:
        return parse(delivery.body)
    except ValidationError as error:
        reason = f"malformed message: {str(error).splitlines()[0]}"
        log.warning("job_malformed", reason=reason, message_id=delivery.message_id)
        await delivery.dead_letter(reason)
        return None


async def settle(
    delivery: Delivery,
    handle: Callable[[], Awaitable[None]],
    *,
    delivery_limit: int,
    give_up: GiveUp,
) -> None:
    try:
        await handle()
    except PermanentFailure as error:
        log.warning("job_dead_lettered", reason=str(error), delivery_count=delivery.delivery_count)
        await delivery.dead_letter(str(error))
        return
    except Exception as error:
        if delivery.delivery_count >= delivery_limit:
            reason = f"gave up after {delivery.delivery_count} attempts: {error}"
            log.error("job_gave_up", reason=reason, exc_info=True)
            try:
                await give_up(reason)
            finally:
                await delivery.dead_letter(reason)
            return
        log.warning("job_retried", error=repr(error), delivery_count=delivery.delivery_count, exc_info=True)
        await delivery.reject(requeue=True)
        return
    await delivery.ack()
