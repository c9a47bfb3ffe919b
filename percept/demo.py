"""Demo models registered as public specs on `percept serve`: built once from packaged data, cached on disk.

They go through the same deployment path as a user's upload: files into the store, a deployment job, a
consumer validating the SavedModel.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from pathlib import Path

import structlog

from broker.port import Broker
from broker.topology import DEPLOYMENT
from engine.zoo import DEMO_MODELS, DemoModel
from gateway.readiness import Readiness
from schemas.documents import PUBLIC_OWNER, NetworkDoc, SpecDoc, TaskDoc, TaskKind, VersionDoc
from schemas.messages import DeploymentJob
from schemas.networks import Framework, NetworkStatus
from store.port import NETWORKS, SPECS, TASKS, VERSIONS, Store, network_file_key

log = structlog.get_logger("demo")
_BUILT_MARKER = ".built"
READINESS_NAME = "demo_models"  # what /readyz names while the demos are not usable yet
_DEPLOYED_POLL_S = 0.25


def _build_cached(demo: DemoModel, folder: Path) -> Path:
    """Training or wrapping weights takes seconds: do it once per data dir."""
    if (folder / _BUILT_MARKER).exists():
        return folder
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    demo.build(staging)
    (staging / _BUILT_MARKER).write_text("ok\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def _read_folder(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != _BUILT_MARKER
    }


async def _register(store: Store, broker: Broker, demo: DemoModel, folder: Path) -> None:
    files = await asyncio.to_thread(_read_folder, folder)
    network_id = await store.next_id("networks")
    for path, data in files.items():
        await store.put_file(network_file_key(network_id, path), data)
    task = TaskDoc(id=await store.next_id("tasks"), owner=PUBLIC_OWNER, kind=TaskKind.DEPLOYMENT)
    await store.insert(TASKS, task)
    await store.insert(
        NETWORKS,
        NetworkDoc(
            id=network_id,
            owner=PUBLIC_OWNER,
            name=demo.name,
            description=demo.description,
            framework=Framework.TENSORFLOW,
            preprocessing=demo.preprocessing,
            files=sorted(files),
            task_id=task.id,
        ),
    )
    version_id = await store.next_id("versions")
    await store.insert(
        VERSIONS,
        VersionDoc(
            id=version_id,
            owner=PUBLIC_OWNER,
            spec_id=demo.key,
            network_id=network_id,
            post_processings=demo.post_processings,
        ),
    )
    await store.insert(
        SPECS,
        SpecDoc(
            id=demo.key,
            owner=PUBLIC_OWNER,
            name=demo.name,
            description=demo.description,
            outputs=demo.outputs,
            current_version_id=int(version_id),
        ),
    )
    job = DeploymentJob(task_id=task.id, owner=PUBLIC_OWNER, network_id=network_id)
    await broker.publish(DEPLOYMENT.name, job.model_dump_json().encode(), message_id=task.id)
    log.info("demo_registered", spec_id=demo.key, network_id=network_id, version_id=version_id)


async def register_demo_models(
    store: Store, broker: Broker, data_dir: Path, demos: Sequence[DemoModel] = DEMO_MODELS
) -> None:
    for demo in demos:
        if await store.get(SPECS, demo.key, owners=[PUBLIC_OWNER]) is not None:
            continue
        loop = asyncio.get_running_loop()
        started = loop.time()
        folder = await asyncio.to_thread(_build_cached, demo, data_dir / "demo-models" / demo.key)
        log.info("demo_built", spec_id=demo.key, s=round(loop.time() - started, 1))
        await _register(store, broker, demo, folder)


class DemoFailed(Exception):
    """A demo model's deployment failed: it will not become usable without a look at the logs."""


async def _deployment(store: Store, key: str) -> NetworkDoc | None:
    spec = await store.get(SPECS, key, owners=[PUBLIC_OWNER])
    if spec is None or spec.current_version_id is None:
        return None
    version = await store.get(VERSIONS, str(spec.current_version_id), owners=[PUBLIC_OWNER])
    if version is None:
        return None
    return await store.get(NETWORKS, version.network_id, owners=[PUBLIC_OWNER])


async def wait_deployed(store: Store, demos: Sequence[DemoModel] = DEMO_MODELS) -> None:
    """Until every demo's network is deployed, this start's or an earlier one's (recovery re-queues those
    cut short); DemoFailed names the first that failed."""
    pending = [demo.key for demo in demos]
    while pending:
        for key in list(pending):
            network = await _deployment(store, key)
            if network is not None and network.status is NetworkStatus.READY:
                pending.remove(key)
            elif network is not None and network.status is NetworkStatus.FAILED:
                raise DemoFailed(f"{key}: deployment failed: {network.deploy_error or 'see the logs'}")
        if pending:
            await asyncio.sleep(_DEPLOYED_POLL_S)


def start_demo_models(
    readiness: Readiness,
    store: Store,
    broker: Broker,
    data_dir: Path,
    demos: Sequence[DemoModel] = DEMO_MODELS,
) -> asyncio.Task[None]:
    """Build, register and deploy the demos in the background; /readyz names them until they can answer.

    Call it before the port opens, so that no request finds /readyz ready before the demos are.
    """
    readiness.wait_for(READINESS_NAME, "building and deploying the demo models (about 20 s on first start)")
    return asyncio.create_task(_provide(readiness, store, broker, data_dir, demos))


async def _provide(
    readiness: Readiness, store: Store, broker: Broker, data_dir: Path, demos: Sequence[DemoModel]
) -> None:
    try:
        await register_demo_models(store, broker, data_dir, demos)
        await wait_deployed(store, demos)
    except DemoFailed as error:
        log.error("demo_failed", error=str(error))
        readiness.wait_for(READINESS_NAME, str(error))
        return
    except Exception as error:
        # Background work: nobody awaits this task, so the failure is logged and shown on /readyz here.
        log.exception("demo_failed")
        readiness.wait_for(READINESS_NAME, f"failed: {error!r}")
        return
    readiness.done(READINESS_NAME)
    log.info("demo_models_ready", spec_ids=[demo.key for demo in demos])
