"""The outbox: a job is in the store before the broker sees it, so none is lost between the two.

A process that records a task and then dies before the broker confirms its job would leave the task pending
forever (and a client retrying with the same `Idempotency-Key` would be handed that dead task). So the job is
recorded first; once the broker confirms it, the record is deleted, lazily and in bulk, off the request path.
The consumers' maintenance re-publishes records older than a grace period whose task is still pending: a job
may then be queued twice, which the consumers absorb (a finished task is never run or written again).

Bodies longer than the store's `outbox_inline_bytes` are files, written without flushing them to disk: they
must outlive the process, as a crash between recording and confirming is what the outbox is for, not the
machine's power (SQLite's commits at synchronous=NORMAL do not either). A pending task whose body was lost
anyway ends in error rather than staying pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog

from schemas.common import utc_now
from schemas.documents import OUTBOX_OWNER, OutboxDoc, TaskOutcome, TaskStatus
from store.port import OUTBOX, TASKS, FileMissing, Store, StoreUnavailable, outbox_file_key

log = structlog.get_logger("outbox")

# Larger bodies always go to the file store (a MongoDB document holds at most 16 MB); the store may set a
# lower bound (Store.outbox_inline_bytes).
INLINE_BODY_BYTES = 1024 * 1024
LOST_BODY_ERROR = "its job was lost before it was queued; submit it again"
_FLUSH_EVERY_S = 0.1


@dataclass(frozen=True)
class Unsent:
    entry: OutboxDoc
    body: bytes


def entry_for(*, queue: str, message_id: str, task_id: str, task_owner: str, body: bytes) -> Unsent:
    entry = OutboxDoc(id=message_id, owner=OUTBOX_OWNER, queue=queue, task_id=task_id, task_owner=task_owner)
    if len(body) > INLINE_BODY_BYTES:
        entry.file_key = outbox_file_key(message_id)
    else:
        entry.body = body.decode()
    return Unsent(entry, body)


async def store_large_bodies(store: Store, unsent: Sequence[Unsent]) -> None:
    """The bodies too large to keep inline in this store, as files: before their records are stored, which
    must happen before (or in one write with, records first: Store.insert_together) their tasks'."""
    for item in unsent:
        entry = item.entry
        if entry.file_key is None and len(item.body) > store.outbox_inline_bytes:
            entry.body, entry.file_key = None, outbox_file_key(entry.id)
        if entry.file_key is not None:
            await store.put_file(entry.file_key, item.body, durable=False)


async def delete(store: Store, entries: Sequence[OutboxDoc]) -> None:
    if not entries:
        return
    await store.delete_many(OUTBOX, [entry.id for entry in entries], owner=OUTBOX_OWNER)
    # By exact key, in one call: deleting each by prefix listed the folder of every other unconfirmed body,
    # which grew faster than the cleaner could list it at a few hundred submissions a second.
    await store.delete_file_keys([entry.file_key for entry in entries if entry.file_key is not None])


async def stale(store: Store, *, older_than: timedelta, limit: int = 500) -> list[Unsent]:
    """Jobs of pending tasks whose records outlived `older_than`; records of any other task are dropped.

    The caller publishes each job, then deletes its record.
    """
    cutoff = utc_now() - older_than
    entries = [entry for entry in await store.sweep(OUTBOX, where={}, limit=limit) if entry.date < cutoff]
    if not entries:
        return []
    owners = sorted({entry.task_owner for entry in entries})
    found = await store.get_many(TASKS, sorted({entry.task_id for entry in entries}), owners=owners)
    pending = {(task.id, task.owner) for task in found if task.status is TaskStatus.PENDING}
    unsent, settled, lost = [], [], []
    for entry in entries:
        # A record without a task: the process died between the two writes, and no client was answered.
        if (entry.task_id, entry.task_owner) not in pending:
            settled.append(entry)
        elif (body := await _body(store, entry)) is None:
            lost.append(entry)
        else:
            unsent.append(Unsent(entry, body))
    if lost:
        # Nothing can run these tasks any more: say so, rather than leave them pending for good.
        await store.finish_tasks(
            [
                TaskOutcome(task_id=entry.task_id, status=TaskStatus.ERROR, error=LOST_BODY_ERROR)
                for entry in lost
            ]
        )
    await delete(store, [*settled, *lost])
    return unsent


async def _body(store: Store, entry: OutboxDoc) -> bytes | None:
    if entry.body is not None:
        return entry.body.encode()
    try:
        return await store.get_file(entry.file_key or outbox_file_key(entry.id))
    except FileMissing:
        log.error("outbox_body_missing", task_id=entry.id)
        return None


class OutboxCleaner:
    """Deletes the records of confirmed jobs in the background: one write per burst of submissions."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._confirmed: list[OutboxDoc] = []
        self._wake = asyncio.Event()

    def confirmed(self, entry: OutboxDoc) -> None:
        self._confirmed.append(entry)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(_FLUSH_EVERY_S)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        confirmed, self._confirmed = self._confirmed, []
        try:
            await delete(self._store, confirmed)
        except StoreUnavailable as error:
            # Left for the sweeper, which finds each task queued or done and drops the record.
            log.warning("outbox_cleanup_deferred", records=len(confirmed), error=str(error))
