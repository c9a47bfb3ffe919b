"""Loaded networks, kept per consumer process: files copied once from the store, each model loaded once."""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from consumers.metrics import MODEL_LOAD_SECONDS
from engine.model import SavedModel
from schemas.networks import Preprocessing
from store.port import Store, network_file_key

log = structlog.get_logger("models")


@dataclass(frozen=True)
class LoadedNetwork:
    network_id: str
    model: SavedModel
    mean: np.ndarray | None


def _write_folder(parent: Path, target: Path, contents: dict[str, bytes]) -> None:
    """Write into a staging folder, then rename: a half-written model is never loaded."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=parent))
    try:
        for path, data in contents.items():
            destination = staging / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data)
        try:
            staging.rename(target)
        except OSError:
            if not target.exists():
                raise
            # Another consumer process on this machine finished first; its copy is identical.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class ModelCache:
    """An LRU of loaded networks. Loads run on the model executor, the thread that also runs predictions."""

    def __init__(self, store: Store, cache_dir: Path, executor: Executor, *, capacity: int) -> None:
        self._store = store
        self._cache_dir = cache_dir
        self._executor = executor
        self._capacity = capacity
        self._loaded: OrderedDict[str, LoadedNetwork] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, network_id: str, files: list[str], preprocessing: Preprocessing) -> LoadedNetwork:
        cached = self._loaded.get(network_id)
        if cached is not None:
            self._loaded.move_to_end(network_id)
            return cached
        lock = self._locks.setdefault(network_id, asyncio.Lock())
        async with lock:
            cached = self._loaded.get(network_id)
            if cached is not None:
                return cached
            loaded = await self._load(network_id, files, preprocessing)
            self._loaded[network_id] = loaded
            while len(self._loaded) > self._capacity:
                evicted, _ = self._loaded.popitem(last=False)
                log.info("model_evicted", network_id=evicted)
            return loaded

    async def _materialise(self, network_id: str, files: list[str]) -> Path:
        """The SavedModel folder on local disk, copied from the store on first use."""
        target = self._cache_dir / network_id
        if await asyncio.to_thread(target.exists):
            return target
        contents = {path: await self._store.get_file(network_file_key(network_id, path)) for path in files}
        await asyncio.to_thread(_write_folder, self._cache_dir, target, contents)
        return target

    async def _load(self, network_id: str, files: list[str], preprocessing: Preprocessing) -> LoadedNetwork:
        folder = await self._materialise(network_id, files)
        loop = asyncio.get_running_loop()
        started = loop.time()
        model = await loop.run_in_executor(self._executor, SavedModel.load, folder)
        mean_file = preprocessing.inputs[0].image.mean_file
        mean = (
            np.load(io.BytesIO((folder / mean_file).read_bytes()), allow_pickle=False) if mean_file else None
        )
        elapsed = loop.time() - started
        MODEL_LOAD_SECONDS.observe(elapsed)
        log.info("model_loaded", network_id=network_id, ms=round(elapsed * 1000, 1))
        return LoadedNetwork(network_id=network_id, model=model, mean=mean)

    def forget(self, network_id: str) -> None:
        """Drop a network (deleted or redeployed): its next use loads it again."""
        self._loaded.pop(network_id, None)
        shutil.rmtree(self._cache_dir / network_id, ignore_errors=True)
