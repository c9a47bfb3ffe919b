"""The consumer's model cache: one copy per network however many versions use it, LRU bounded in megabytes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from consumers.models import ModelCache
from schemas.networks import Preprocessing
from store.factory import open_store
from store.port import Store, network_file_key

PREPROCESSING = Preprocessing.model_validate(
    {"inputs": [{"tensor_name": "image", "image": {"target_size": "16x16"}}]}
)


async def _stored(store: Store, network_id: str, folder: Path) -> list[str]:
    contents = {str(path.relative_to(folder)): path.read_bytes() for path in network_parts_paths(folder)}
    for path, data in contents.items():
        await store.put_file(network_file_key(network_id, path), data)
    return list(contents)


def network_parts_paths(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


async def test_concurrent_users_of_one_network_share_one_load(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    store = await open_store("", tmp_path)
    try:
        files = await _stored(store, "1", tiny_models["brightness"])
        cache = ModelCache(store, tmp_path / "cache", capacity_bytes=2**30)
        loads = await asyncio.gather(*(cache.get("1", files, PREPROCESSING) for _ in range(5)))
        assert all(loaded is loads[0] for loaded in loads)
        assert loads[0].size_bytes > 0
    finally:
        await store.close()


async def test_least_recently_used_models_leave_first_when_over_budget(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    store = await open_store("", tmp_path)
    try:
        brightness = await _stored(store, "1", tiny_models["brightness"])
        boxes = await _stored(store, "2", tiny_models["boxes"])
        again = await _stored(store, "3", tiny_models["brightness"])
        probe = ModelCache(store, tmp_path / "probe", capacity_bytes=2**30)
        one = (await probe.get("1", brightness, PREPROCESSING)).size_bytes
        # Room for two brightness-sized models: the third load evicts the least recently used.
        budget = 2 * one + one // 2
        dropped: list[str] = []
        cache = ModelCache(store, tmp_path / "cache", capacity_bytes=budget, on_drop=dropped.append)
        await cache.get("1", brightness, PREPROCESSING)
        await cache.get("3", again, PREPROCESSING)
        await cache.get("1", brightness, PREPROCESSING)  # now "3" is the least recently used
        await cache.get("2", boxes, PREPROCESSING)
        assert "3" not in cache.loaded_ids and cache.loaded_ids[-1] == "2"
        assert dropped == ["3"]  # the engine processes are told to let it go
        # A model bigger than the whole budget still loads; it simply stands alone.
        tiny = ModelCache(store, tmp_path / "tiny", capacity_bytes=1)
        await tiny.get("1", brightness, PREPROCESSING)
        await tiny.get("2", boxes, PREPROCESSING)
        assert tiny.loaded_ids == ["2"]
    finally:
        await store.close()
