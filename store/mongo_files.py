"""Model files in MongoDB: GridFS on a real server, one document per file where GridFS cannot run.

`files_for` picks the strategy: `GridFsFiles` for PyMongo's `AsyncDatabase` (production, and the contract
tests when `PERCEPT_STORE_URL` names a server); `CollectionFiles` for anything else, which in practice is
mongomock-motor's database (GridFS's async bucket needs a real `AsyncDatabase`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any, Protocol

from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from store.keys import check_key, check_prefix
from store.port import FileMissing


class FileStore(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes:
        """Raises FileMissing."""
        ...

    async def delete(self, prefix: str) -> int: ...

    async def delete_keys(self, keys: Sequence[str]) -> int: ...


def files_for(db: AsyncDatabase[Any]) -> FileStore:
    if isinstance(db, AsyncDatabase):
        return GridFsFiles(db)
    return CollectionFiles(db["files"])


def _starting_with(prefix: str) -> dict[str, str]:
    # Anchored and escaped: a literal prefix match that can use the index on the name.
    return {"$regex": f"^{re.escape(check_prefix(prefix))}"}


class GridFsFiles:
    """Files in chunks of 255 kB, so model files can exceed MongoDB's 16 MB document limit."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._bucket = AsyncGridFSBucket(db)

    async def put(self, key: str, data: bytes) -> None:
        new_id = await self._bucket.upload_from_stream(check_key(key), data)
        # GridFS keeps each upload as a revision and readers get the newest; drop the older ones. `$lt`
        # (ObjectIds grow with time) rather than `$ne`, so that of two concurrent puts one always survives.
        async for old in self._bucket.find({"filename": key, "_id": {"$lt": new_id}}):
            with contextlib.suppress(NoFile):  # a concurrent put removed it first
                await self._bucket.delete(old._id)

    async def get(self, key: str) -> bytes:
        try:
            stream = await self._bucket.open_download_stream_by_name(check_key(key))
        except NoFile as error:
            raise FileMissing(key) from error
        return await stream.read()

    async def delete(self, prefix: str) -> int:
        deleted: set[str] = set()
        async for stored in self._bucket.find({"filename": _starting_with(prefix)}):
            with contextlib.suppress(NoFile):
                await self._bucket.delete(stored._id)
                deleted.add(stored.filename)
        return len(deleted)  # keys, not revisions

    async def delete_keys(self, keys: Sequence[str]) -> int:
        deleted: set[str] = set()
        async for stored in self._bucket.find({"filename": {"$in": [check_key(key) for key in keys]}}):
            with contextlib.suppress(NoFile):
                await self._bucket.delete(stored._id)
                deleted.add(stored.filename)
        return len(deleted)


class CollectionFiles:
    """One `{_id: key, data: bytes}` document per file: fine for tests, capped at 16 MB per file."""

    def __init__(self, collection: AsyncCollection[Any]) -> None:
        self._files = collection

    async def put(self, key: str, data: bytes) -> None:
        await self._files.replace_one({"_id": check_key(key)}, {"_id": key, "data": data}, upsert=True)

    async def get(self, key: str) -> bytes:
        stored = await self._files.find_one({"_id": check_key(key)})
        if stored is None:
            raise FileMissing(key)
        return bytes(stored["data"])

    async def delete(self, prefix: str) -> int:
        result = await self._files.delete_many({"_id": _starting_with(prefix)})
        return result.deleted_count

    async def delete_keys(self, keys: Sequence[str]) -> int:
        result = await self._files.delete_many({"_id": {"$in": [check_key(key) for key in keys]}})
        return result.deleted_count
