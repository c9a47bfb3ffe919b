"""Embedded mode restarts: deployments are queued again, interrupted inference tasks end with a reason."""

from __future__ import annotations

from pathlib import Path

from broker.memory import MemoryBroker
from broker.topology import DEPLOYMENT
from percept.recovery import INTERRUPTED, recover_embedded
from schemas.documents import NetworkDoc, TaskDoc, TaskKind, TaskStatus
from schemas.networks import Framework, Preprocessing
from store.factory import open_store
from store.port import NETWORKS, TASKS


async def test_recovery_requeues_deployments_and_ends_lost_jobs(tmp_path: Path) -> None:
    store = await open_store("", tmp_path)
    broker = MemoryBroker()
    await broker.start()
    try:
        preprocessing = Preprocessing.model_validate(
            {"inputs": [{"tensor_name": "image", "image": {"target_size": "8x8"}}]}
        )
        await store.insert(TASKS, TaskDoc(id="1", owner="alice", kind=TaskKind.DEPLOYMENT))
        await store.insert(
            NETWORKS,
            NetworkDoc(
                id="7",
                owner="alice",
                name="n",
                framework=Framework.TENSORFLOW,
                preprocessing=preprocessing,
                task_id="1",
            ),
        )
        await store.insert(TASKS, TaskDoc(id="2", owner="bob", kind=TaskKind.INFERENCE))
        await store.insert(
            TASKS, TaskDoc(id="3", owner="bob", kind=TaskKind.INFERENCE, status=TaskStatus.SUCCESS)
        )

        await recover_embedded(store, broker)

        assert await broker.queue_depth(DEPLOYMENT.name) == 1
        lost = await store.get(TASKS, "2", owners=["bob"])
        assert lost is not None and lost.status is TaskStatus.ERROR and lost.error == INTERRUPTED
        done = await store.get(TASKS, "3", owners=["bob"])
        assert done is not None and done.status is TaskStatus.SUCCESS
        deployment = await store.get(TASKS, "1", owners=["alice"])
        assert deployment is not None and deployment.status is TaskStatus.PENDING
    finally:
        await broker.close()
        await store.close()
