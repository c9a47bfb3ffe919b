"""Demo models registered as public specs on `percept serve`: built once from packaged data, cached on disk.

They go through the same deployment path as a user's upload: files into the store, a deployment job, a
consumer validating the SavedModel.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import structlog

from broker.port import Broker
from broker.topology import DEPLOYMENT
from engine.zoo import DEMO_MODELS, DemoModel
from schemas.documents import PUBLIC_OWNER, NetworkDoc, SpecDoc, TaskDoc, TaskKind, VersionDoc
from schemas.messages import DeploymentJob
from schemas.networks import Framework
from store.port import NETWORKS, SPECS, TASKS, VERSIONS, Store, network_file_key

log = structlog.get_logger("demo")
_BUILT_MARKER = ".built"


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


async def register_demo_models(store: Store, broker: Broker, data_dir: Path) -> None:
    for demo in DEMO_MODELS:
        if await store.get(SPECS, demo.key, owners=[PUBLIC_OWNER]) is not None:
            continue
        loop = asyncio.get_running_loop()
        started = loop.time()
        folder = await asyncio.to_thread(_build_cached, demo, data_dir / "demo-models" / demo.key)
        log.info("demo_built", spec_id=demo.key, s=round(loop.time() - started, 1))
        await _register(store, broker, demo, folder)
