"""Ids handed out of blocks reserved in one store write each, rather than one write per id.

A gateway reserving one task id per submission paid a write transaction (and, on SQLite, a thread hop) for
each. Ids from a block stay unique across processes (Store.reserve_ids), but are no longer dense or
increasing across processes: a process that stops leaves the rest of its block unused, and two gateways
interleave. Nothing orders by id (listings follow insertion order), and ids are opaque decimal strings.
"""

from __future__ import annotations

import asyncio

from store.port import Store


class IdBlocks:
    def __init__(self, store: Store, counter: str, *, block: int) -> None:
        if block < 1:
            raise ValueError(f"a block holds at least one id, not {block}")
        self._store = store
        self._counter = counter
        self._block = block
        self._left: range = range(0)
        # One refill at a time: coroutines arriving while a block is fetched take ids from that block.
        self._lock = asyncio.Lock()

    async def next(self) -> str:
        return (await self.take(1))[0]

    async def take(self, count: int) -> list[str]:
        """`count` fresh ids, in increasing order."""
        if count < 1:
            return []
        async with self._lock:
            if len(self._left) < count:
                # The remainder of the current block is kept in front, so no reserved id goes unused.
                needed = count - len(self._left)
                fresh = await self._store.reserve_ids(self._counter, max(self._block, needed))
                ids = [*self._left, *fresh[:needed]]
                self._left = fresh[needed:]
            else:
                ids = list(self._left[:count])
                self._left = self._left[count:]
        return [str(value) for value in ids]
