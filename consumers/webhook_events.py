"""What a finished task announces: its event type and the Standard Webhooks body, fixed for every retry."""

from __future__ import annotations

import json

from schemas.common import iso
from schemas.documents import TaskDoc, TaskKind, TaskStatus
from schemas.webhooks import WebhookEvent


def event_of(task: TaskDoc) -> WebhookEvent | None:
    """One event per finished task; None while it is pending."""
    if task.status is TaskStatus.PENDING:
        return None
    if task.status is TaskStatus.ERROR:
        return WebhookEvent.TASK_FAILED
    return WebhookEvent.NETWORK_DEPLOYED if task.kind is TaskKind.DEPLOYMENT else WebhookEvent.TASK_SUCCEEDED


def body_of(task: TaskDoc, event: WebhookEvent) -> str:
    """`data` is the task as `GET /v0.7/tasks/{id}/` shows it, plus its kind."""
    data = {
        "id": task.id,
        "kind": task.kind.value,
        "status": task.status.value,
        "error": task.error,
        "data": task.data,
        "date_created": iso(task.date_created),
        "date_updated": iso(task.date_updated),
    }
    return json.dumps({"type": event.value, "timestamp": iso(task.date_updated), "data": data})


def message_id(task_id: str, endpoint_id: str | None) -> str:
    """The `webhook-id`: stable per task and target, so receivers can drop the duplicates of at-least-once."""
    return f"msg_task{task_id}_{'callback' if endpoint_id is None else 'ep' + endpoint_id}"
