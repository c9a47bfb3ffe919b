"""Networks a consumer process uses: files copied once from the store, kept in an LRU bounded in megabytes.

The models themselves live in the engine processes (consumers.engines); this cache decides which ones stay
there, and tells them to drop the rest. A model's weight is estimated by the size of its SavedModel folder
(graph + variables), which is what TensorFlow keeps resident for inference; the true figure adds per-model
runtime buffers that vary with batch size, so leave headroom when setting PERCEPT_MODEL_CACHE_MB.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from schemas.networks import Preprocessing
from store.port import Store, network_file_key

log = structlog.get_logger("models")


@dataclass(frozen=True)
class LoadedNetwork:
    """A network ready for the engine: its folder on local disk (absolute), and its mean image for
    pre-processing."""

    network_id: str
    folder: Path
    mean: np.ndarray | None
    size_bytes: int


def _folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


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


Drop = Callable[[str], None]


class ModelCache:
    """An LRU of networks; versions of one network share it. `on_drop` hears of every network that leaves."""

    def __init__(
        self, store: Store, cache_dir: Path, *, capacity_bytes: int, on_drop: Drop = lambda _id: None
    ) -> None:
        self._store = store
        # Absolute once, here: engine processes run in the fork server's working directory, and a batch's
        # request should not resolve a path on every run.
        self._cache_dir = cache_dir.absolute()
        self.on_drop = on_drop
        self._capacity_bytes = capacity_bytes
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
            self._evict()
            return loaded

    def _evict(self) -> None:
        """Least recently used first, never the model just loaded (one over budget still runs)."""
        total = sum(network.size_bytes for network in self._loaded.values())
        while total > self._capacity_bytes and len(self._loaded) > 1:
            evicted_id, evicted = self._loaded.popitem(last=False)
            total -= evicted.size_bytes
            log.info("model_evicted", network_id=evicted_id, mb=round(evicted.size_bytes / 2**20, 1))
            self.on_drop(evicted_id)

    @property
    def loaded_ids(self) -> list[str]:
        """Least recently used first."""
        return list(self._loaded)

    async def materialise(self, network_id: str, files: list[str]) -> Path:
        """The SavedModel folder on local disk, copied from the store on first use."""
        target = self._cache_dir / network_id
        if await asyncio.to_thread(target.exists):
            return target
        contents = {path: await self._store.get_file(network_file_key(network_id, path)) for path in files}
        await asyncio.to_thread(_write_folder, self._cache_dir, target, contents)
        return target

    async def _load(self, network_id: str, files: list[str], preprocessing: Preprocessing) -> LoadedNetwork:
        folder = await self.materialise(network_id, files)
        mean_file = preprocessing.inputs[0].image.mean_file
        mean = (
            np.load(io.BytesIO((folder / mean_file).read_bytes()), allow_pickle=False) if mean_file else None
        )
        size = await asyncio.to_thread(_folder_size, folder)
        log.info("model_cached", network_id=network_id, mb=round(size / 2**20, 1))
        return LoadedNetwork(network_id=network_id, folder=folder, mean=mean, size_bytes=size)

    def forget(self, network_id: str) -> None:
        """Drop a network (deleted or redeployed): its next use loads it again."""
        self._loaded.pop(network_id, None)
        shutil.rmtree(self._cache_dir / network_id, ignore_errors=True)
        self.on_drop(network_id)
