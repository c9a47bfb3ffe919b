"""Hooking a task at submission, so the consumer that finishes it finds its webhooks in one read by id.

Every door that creates tasks calls it: the HTTP gateway and the queue-producer consumer.
"""

from __future__ import annotations

from schemas.documents import HOOKS_OWNER, TaskDoc, TaskHookDoc
from store.port import TASK_HOOKS, WEBHOOK_ENDPOINTS, Store


async def hook_task(store: Store, task: TaskDoc) -> None:
    """Call before the job is published. Endpoints registered later miss the tasks submitted before."""
    if task.callback_url is None:
        endpoints = await store.find(WEBHOOK_ENDPOINTS, owners=[task.owner], where={"enabled": True}, limit=0)
        if not endpoints.count:
            return
    hook = TaskHookDoc(id=task.id, owner=HOOKS_OWNER, tenant=task.owner, callback_url=task.callback_url)
    await store.insert(TASK_HOOKS, hook)
