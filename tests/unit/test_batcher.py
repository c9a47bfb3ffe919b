"""The batcher: size and delay flushes, idle flushing, one result per item, failures per batch."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence

import pytest

from consumers.batcher import Batcher


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[Hashable, list[int]]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.started = asyncio.Event()

    async def run(self, key: Hashable, items: Sequence[int]) -> list[int]:
        self.batches.append((key, list(items)))
        self.started.set()
        await self.release.wait()
        if any(item < 0 for item in items):
            raise ValueError("negative")
        return [item * 10 for item in items]


async def _drive(batcher: Batcher[int, int], **kwargs: bool) -> asyncio.Task[None]:
    return asyncio.create_task(batcher.run(**kwargs))


async def test_items_arriving_together_share_a_batch_up_to_max_size() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.run, max_size=3, max_delay=10.0)
    runner = await _drive(batcher)
    futures = [batcher.submit("a", i) for i in range(5)]
    assert await asyncio.gather(*futures) == [0, 10, 20, 30, 40]
    assert [items for _, items in recorder.batches] == [[0, 1, 2], [3, 4]]
    runner.cancel()


async def test_keys_are_never_mixed() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.run, max_size=8, max_delay=10.0)
    runner = await _drive(batcher)
    futures = [batcher.submit("ab"[i % 2], i) for i in range(6)]
    await asyncio.gather(*futures)
    assert sorted(recorder.batches) == [("a", [0, 2, 4]), ("b", [1, 3, 5])]
    runner.cancel()


async def test_items_pile_up_while_a_batch_runs() -> None:
    recorder = Recorder()
    recorder.release.clear()
    batcher: Batcher[int, int] = Batcher(recorder.run, max_size=8, max_delay=10.0)
    runner = await _drive(batcher)
    first = batcher.submit("a", 1)
    await recorder.started.wait()
    later = [batcher.submit("a", i) for i in (2, 3, 4)]
    recorder.release.set()
    await asyncio.gather(first, *later)
    assert [items for _, items in recorder.batches] == [[1], [2, 3, 4]]
    runner.cancel()


async def test_without_idle_flush_a_partial_batch_waits_for_the_delay() -> None:
    now = [0.0]
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.run, max_size=8, max_delay=0.05, clock=lambda: now[0])
    runner = await _drive(batcher, flush_when_idle=False)
    future = batcher.submit("a", 1)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not recorder.batches
    now[0] = 1.0  # the fake clock passes the deadline; the real timeout wakes the loop to look
    assert await asyncio.wait_for(future, timeout=5) == 10
    runner.cancel()


async def test_a_failed_batch_fails_its_futures_only() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.run, max_size=2, max_delay=10.0)
    runner = await _drive(batcher)
    bad = [batcher.submit("a", -1), batcher.submit("a", 2)]
    good = batcher.submit("b", 3)
    for future in bad:
        with pytest.raises(ValueError, match="negative"):
            await future
    assert await good == 30
    runner.cancel()
