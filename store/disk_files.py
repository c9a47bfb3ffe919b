"""Model files as plain files under one folder: the SQLite adapter's file store.

Several processes share the folder (gateway and consumers on one machine), so every write lands atomically:
a reader sees the old file or the new one, never half of either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from store.keys import check_key, check_prefix
from store.port import FileMissing, StoreError

_INLINE_WRITE_BYTES = 1024 * 1024


class DiskFiles:
    def __init__(self, root: Path) -> None:
        self._root = root

    # Model files can be large: the blocking file calls run in a worker thread, off the event loop. A small
    # unflushed write only copies into the page cache (about 0.1 ms for the 127 KB of an outbox body), and
    # the hop to a thread cost about half as much CPU again: those run on the loop.
    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        target = self._root / check_key(key)
        if not durable and len(data) <= _INLINE_WRITE_BYTES:
            self._put(target, data, durable)
        else:
            await asyncio.to_thread(self._put, target, data, durable)

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread((self._root / check_key(key)).read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            raise FileMissing(key) from error

    async def delete(self, prefix: str) -> int:
        return await asyncio.to_thread(self._delete, check_prefix(prefix))

    async def delete_keys(self, keys: Sequence[str]) -> int:
        """Each file by its name, in one trip to a thread: no folder listing, unlike `delete`."""
        targets = [self._root / check_key(key) for key in keys]
        return await asyncio.to_thread(self._unlink_each, targets) if targets else 0

    @staticmethod
    def _unlink_each(targets: Sequence[Path]) -> int:
        deleted = 0
        for target in targets:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                target.unlink()
                deleted += 1
        return deleted

    @staticmethod
    def _put(target: Path, data: bytes, durable: bool) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            descriptor, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            try:
                with os.fdopen(descriptor, "wb") as out:
                    out.write(data)
                    if durable:
                        out.flush()
                        # The rename must not become visible before the bytes are durable.
                        os.fsync(out.fileno())
                os.replace(temp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
        except (FileExistsError, IsADirectoryError, NotADirectoryError) as error:
            raise StoreError(f"{target}: the key collides with a stored folder or file") from error

    def _delete(self, prefix: str) -> int:
        folder = prefix.rpartition("/")[0]
        deleted = 0
        # Bottom-up, so folders emptied by this call can be removed after their files.
        for directory, _, names in os.walk(self._root / folder, topdown=False):
            directory_key = Path(directory).relative_to(self._root).as_posix()
            for name in names:
                key = name if directory_key == "." else f"{directory_key}/{name}"
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):  # another process deleted it first
                        os.unlink(os.path.join(directory, name))
                        deleted += 1
            if f"{directory_key}/".startswith(prefix):
                with contextlib.suppress(OSError):  # not empty: a concurrent put, or files outside the prefix
                    os.rmdir(directory)
        return deleted
