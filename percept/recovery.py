"""Start-up recovery for the embedded mode: the in-process broker keeps no messages across restarts.

Deployments are re-queued (the files are in the store). Inference jobs carried their image inside the lost
message, so their tasks end in `error` with a reason instead of staying pending forever.
"""

from __future__ import annotations

import structlog

from broker.port import Broker
from broker.topology import DEPLOYMENT
from schemas.documents import TaskOutcome, TaskStatus
from schemas.messages import DeploymentJob
from store.port import NETWORKS, TASKS, Store

log = structlog.get_logger("recovery")
INTERRUPTED = "interrupted: Percept restarted before this task ran; submit it again"
_PAGE = 1000


async def recover_embedded(store: Store, broker: Broker) -> None:
    for network in await store.sweep(NETWORKS, where={"status": "deploying"}):
        job = DeploymentJob(task_id=network.task_id, owner=network.owner, network_id=network.id)
        await broker.publish(DEPLOYMENT.name, job.model_dump_json().encode(), message_id=network.task_id)
        log.info("deployment_requeued", network_id=network.id, task_id=network.task_id)
    interrupted = 0
    while pending := await store.sweep(TASKS, where={"status": "pending", "kind": "inference"}, limit=_PAGE):
        outcomes = [
            TaskOutcome(task_id=task.id, status=TaskStatus.ERROR, error=INTERRUPTED) for task in pending
        ]
        interrupted += await store.finish_tasks(outcomes)
    if interrupted:
        log.warning("tasks_interrupted", count=interrupted)
