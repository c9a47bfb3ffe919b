"""The MongoDB adapter, over PyMongo's async API: the distributed deployment's store.

A document is its JSON body with `id` stored as `_id`, plus `seq` (insertion order, from a counter), plus, in
collections whose documents expire, `_expires_from`: their date as a BSON date, which a TTL index can read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, OperationFailure

from schemas.documents import TaskOutcome, TaskStatus
from store.codec import (
    JsonScalar,
    apply_changes,
    check_page,
    check_where,
    expectation_met,
    finished_fields,
)
from store.mongo_files import FileStore, files_for
from store.port import (
    ALL_COLLECTIONS,
    EXPIRING,
    TASKS,
    Batch,
    Collection,
    D,
    DuplicateId,
    Expiring,
    Page,
    Store,
    StoreUnavailable,
    Where,
)

DEFAULT_DATABASE = "percept"
_COUNTERS = "counters"  # next_id's counters
_SEQUENCES = "sequences"  # one insertion counter per collection, apart so no next_id name can collide
_EXPIRES_FROM = "_expires_from"
_EXPIRY_INDEX = "expiry"
_INDEX_OPTIONS_CONFLICT = 85
_EXPIRING = {expiring.collection.name: expiring for expiring in EXPIRING}


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    # ConnectionFailure covers AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError and a lost primary.
    try:
        yield
    except ConnectionFailure as error:
        raise StoreUnavailable(f"mongodb: {error}") from error


def _stored(field: str) -> str:
    return "_id" if field == "id" else field


def _matching(owners: Sequence[str] | None, where: Mapping[str, JsonScalar]) -> dict[str, Any]:
    # `$and` keeps the owner scope even when `where` also names `owner`.
    scope = {} if owners is None else {"owner": {"$in": list(owners)}}
    return {"$and": [scope, *({_stored(f): v} for f, v in where.items())]}


def _loaded(collection: Collection[D], stored: Mapping[str, Any]) -> D:
    body = {field: value for field, value in stored.items() if field not in ("_id", "seq", _EXPIRES_FROM)}
    return collection.model.model_validate({**body, "id": stored["_id"]})


class MongoStore(Store):
    def __init__(
        self,
        db: AsyncDatabase[Any],
        *,
        files: FileStore | None = None,
        client: AsyncMongoClient[Any] | None = None,
        retention_s: int | None = None,
        transactions: bool | None = None,
    ) -> None:
        """`client`, when given, is closed by `close()`; `files` defaults to `files_for(db)`.

        With `retention_s`, TTL indexes let MongoDB itself delete expired documents (purge_expired does the
        same on demand, for both adapters alike). `transactions`: whether the server runs them (a replica
        set or a sharded cluster); None asks the server on first need.
        """
        self._db = db
        self._files = files or files_for(db)
        self._client = client
        self._retention_s = retention_s
        self._transactions = transactions

    @classmethod
    async def connect(cls, url: str, *, retention_s: int | None = None) -> MongoStore:
        """The database named in `url`, or `percept`; the client connects lazily, on first use."""
        client: AsyncMongoClient[Any] = AsyncMongoClient(url)
        store = cls(client.get_default_database(DEFAULT_DATABASE), client=client, retention_s=retention_s)
        try:
            await store.ensure_indexes()
        except BaseException:
            await client.close()
            raise
        return store

    async def ensure_indexes(self) -> None:
        """Idempotent; every list is scoped by owner and ordered by insertion."""
        with _reachable():
            for collection in ALL_COLLECTIONS:
                await self._db[collection.name].create_index([("owner", ASCENDING), ("seq", ASCENDING)])
            for name in _EXPIRING:
                await self._ensure_expiry_index(name)

    async def _ensure_expiry_index(self, name: str) -> None:
        options: dict[str, Any] = {"name": _EXPIRY_INDEX}
        if self._retention_s is not None:
            options["expireAfterSeconds"] = self._retention_s
        try:
            await self._db[name].create_index([(_EXPIRES_FROM, ASCENDING)], **options)
        except OperationFailure as error:
            if error.code != _INDEX_OPTIONS_CONFLICT or self._retention_s is None:
                raise
            # The retention changed since the index was made: change the index rather than rebuild it.
            await self._db.command(
                {"collMod": name, "index": {"name": _EXPIRY_INDEX, "expireAfterSeconds": self._retention_s}}
            )

    async def next_id(self, counter: str) -> str:
        return str(await self._increment(_COUNTERS, counter))

    async def reserve_ids(self, counter: str, count: int) -> range:
        if count < 1:
            raise ValueError(f"reserve at least one id, not {count}")
        last = await self._increment(_COUNTERS, counter, by=count)
        return range(last - count + 1, last + 1)

    async def insert(self, collection: Collection[D], doc: D) -> None:
        stored = doc.model_dump(mode="json", exclude={"id"})
        if (expiring := _EXPIRING.get(collection.name)) is not None:
            stored[_EXPIRES_FROM] = getattr(doc, expiring.date_field)
        with _reachable():
            seq = await self._increment(_SEQUENCES, collection.name)
            try:
                await self._db[collection.name].insert_one({"_id": doc.id, "seq": seq, **stored})
            except DuplicateKeyError as error:
                raise DuplicateId(f"{collection.name}/{doc.id}") from error

    async def insert_many(self, collection: Collection[D], docs: Sequence[D]) -> None:
        if not docs:
            return
        with _reachable():
            # One increment reserves a run of sequence numbers, so the documents keep their given order.
            last = await self._increment(_SEQUENCES, collection.name, by=len(docs))
            first = last - len(docs) + 1
            stored = [
                {"_id": doc.id, "seq": first + offset, **doc.model_dump(mode="json", exclude={"id"})}
                for offset, doc in enumerate(docs)
            ]
            try:
                await self._db[collection.name].insert_many(stored, ordered=True)
            except BulkWriteError as error:
                raise DuplicateId(f"{collection.name}: {error.details.get('writeErrors', [])[:1]}") from error

    async def insert_together(self, batches: Sequence[Batch]) -> None:
        for collection, docs in batches:
            await self.insert_many(collection, docs)

    async def get(self, collection: Collection[D], doc_id: str, *, owners: Sequence[str]) -> D | None:
        with _reachable():
            stored = await self._db[collection.name].find_one({"_id": doc_id, "owner": {"$in": list(owners)}})
        return None if stored is None else _loaded(collection, stored)

    async def get_many(
        self, collection: Collection[D], ids: Sequence[str], *, owners: Sequence[str]
    ) -> list[D]:
        query = {"_id": {"$in": list(ids)}, "owner": {"$in": list(owners)}}
        with _reachable():
            found = await self._db[collection.name].find(query).to_list(None)
        by_id = {stored["_id"]: stored for stored in found}
        return [_loaded(collection, by_id[i]) for i in ids if i in by_id]

    async def find(
        self,
        collection: Collection[D],
        *,
        owners: Sequence[str],
        where: Where | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Page[D]:
        check_page(offset, limit)
        query = _matching(owners, check_where(collection, where))
        documents = self._db[collection.name]
        with _reachable():
            count = await documents.count_documents(query)
            # A cursor limit of 0 means "no limit" to MongoDB, so an empty page is not asked for at all.
            found = (
                await documents.find(query).sort("seq", ASCENDING).skip(offset).limit(limit).to_list(None)
                if limit
                else []
            )
        return Page(count=count, items=[_loaded(collection, stored) for stored in found])

    async def sweep(self, collection: Collection[D], *, where: Where, limit: int = 1000) -> list[D]:
        check_page(0, limit)
        query = _matching(None, check_where(collection, where))
        with _reachable():
            found = (
                await self._db[collection.name].find(query).sort("seq", ASCENDING).limit(limit).to_list(None)
            )
        return [_loaded(collection, stored) for stored in found]

    async def update(
        self,
        collection: Collection[D],
        doc_id: str,
        *,
        owner: str,
        changes: Mapping[str, Any],
        expect: Where | None = None,
    ) -> D | None:
        documents = self._db[collection.name]
        query = {"_id": doc_id, "owner": owner}
        with _reachable():
            stored = await documents.find_one(query)
            if stored is None:
                return None
            current = _loaded(collection, stored)
            if not expectation_met(collection, current, expect):
                return None
            updated = apply_changes(collection, current, changes)
            if not changes:
                return updated  # MongoDB refuses an empty $set
            # Only the changed fields are set, so concurrent updates of other fields are not undone; the
            # expectation is part of the filter, so it holds at the moment of the write.
            stored = await documents.find_one_and_update(
                _matching([owner], {"id": doc_id, **check_where(collection, expect)}),
                {"$set": updated.model_dump(mode="json", include=set(changes))},
                return_document=ReturnDocument.AFTER,
            )
        return None if stored is None else _loaded(collection, stored)

    async def delete(self, collection: Collection[D], doc_id: str, *, owner: str) -> bool:
        with _reachable():
            result = await self._db[collection.name].delete_one({"_id": doc_id, "owner": owner})
        return result.deleted_count > 0

    async def delete_where(self, collection: Collection[D], *, owner: str, where: Where) -> int:
        query = _matching([owner], check_where(collection, where))
        with _reachable():
            result = await self._db[collection.name].delete_many(query)
        return result.deleted_count

    async def replace_where(
        self, collection: Collection[D], *, owner: str, where: Where, docs: Sequence[D]
    ) -> int:
        documents = self._db[collection.name]
        matching = _matching([owner], check_where(collection, where))
        with _reachable():
            # At least one number even with no documents: the bound below which matches are older.
            last = await self._increment(_SEQUENCES, collection.name, by=max(len(docs), 1))
            first = last - max(len(docs), 1) + 1
            stored = [
                {"_id": doc.id, "seq": first + offset, **doc.model_dump(mode="json", exclude={"id"})}
                for offset, doc in enumerate(docs)
            ]
            if await self._runs_transactions():
                return await self._replace_in_transaction(documents, matching, stored)
            # Standalone: insert, then delete the matches inserted before; never a moment without either.
            # Of concurrent replacements, the one with the highest sequence numbers wins: it deletes the
            # others' documents inserted before its delete, and those inserted after it see it and withdraw.
            ours = {"_id": {"$in": [doc["_id"] for doc in stored]}, "seq": {"$gte": first, "$lte": last}}
            try:
                if stored:
                    await documents.insert_many(stored, ordered=True)
            except BulkWriteError as error:
                await documents.delete_many(ours)
                raise DuplicateId(f"{collection.name}: {error.details.get('writeErrors', [])[:1]}") from error
            deleted = await documents.delete_many({"$and": [matching, {"seq": {"$lt": first}}]})
            if stored and await documents.find_one({"$and": [matching, {"seq": {"$gt": last}}]}):
                await documents.delete_many(ours)
            return int(deleted.deleted_count)

    async def _replace_in_transaction(
        self, documents: Any, matching: Mapping[str, Any], stored: list[dict[str, Any]]
    ) -> int:
        async def replace(session: AsyncClientSession) -> int:
            deleted = await documents.delete_many(matching, session=session)
            if stored:
                await documents.insert_many(stored, ordered=True, session=session)
            return int(deleted.deleted_count)

        # with_transaction retries a write conflict with a concurrent replacement (a transient error).
        try:
            async with self._db.client.start_session() as session:
                return await session.with_transaction(replace)
        except BulkWriteError as error:
            raise DuplicateId(f"{documents.name}: {error.details.get('writeErrors', [])[:1]}") from error

    async def _runs_transactions(self) -> bool:
        """A replica set member names its set; a mongos says `isdbgrid`; a standalone says neither."""
        if self._transactions is None:
            hello = await self._db.client.admin.command("hello")
            self._transactions = "setName" in hello or hello.get("msg") == "isdbgrid"
        return self._transactions

    async def delete_many(self, collection: Collection[D], ids: Sequence[str], *, owner: str) -> int:
        if not ids:
            return 0
        with _reachable():
            result = await self._db[collection.name].delete_many({"_id": {"$in": list(ids)}, "owner": owner})
        return result.deleted_count

    async def purge_expired(self, expiring: Expiring, *, before: datetime, limit: int = 1000) -> int:
        check_page(0, limit)
        documents = self._db[expiring.collection.name]
        expired = {_EXPIRES_FROM: {"$lt": before}}
        with _reachable():
            found = await documents.find(expired, {"_id": 1}).sort(_EXPIRES_FROM).limit(limit).to_list(None)
            if not found:
                return 0
            result = await documents.delete_many({"_id": {"$in": [doc["_id"] for doc in found]}, **expired})
        return result.deleted_count

    async def finish_tasks(self, outcomes: Sequence[TaskOutcome]) -> int:
        pending = TaskStatus.PENDING.value
        # The status condition makes each write conditional: a task never leaves a terminal state.
        requests = [
            UpdateOne({"_id": outcome.task_id, "status": pending}, {"$set": finished_fields(outcome)})
            for outcome in outcomes
        ]
        if not requests:
            return 0  # MongoDB refuses an empty bulk write
        with _reachable():
            # Ordered, so that of two outcomes for one task the first wins, as in the SQLite adapter.
            result = await self._db[TASKS.name].bulk_write(requests, ordered=True)
        return result.modified_count

    async def put_file(self, key: str, data: bytes, *, durable: bool = True) -> None:
        # GridFS writes are as durable as the database's write concern makes them, whatever `durable` says.
        with _reachable():
            await self._files.put(key, data)

    async def get_file(self, key: str) -> bytes:
        with _reachable():
            return await self._files.get(key)

    async def delete_files(self, prefix: str) -> int:
        with _reachable():
            return await self._files.delete(prefix)

    async def delete_file_keys(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        with _reachable():
            return await self._files.delete_keys(keys)

    async def ping(self) -> None:
        with _reachable():
            await self._db.command("ping")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def _increment(self, counters: str, name: str, *, by: int = 1) -> int:
        # An upsert on `_id`: MongoDB (4.2+) retries the duplicate-key race of two first uses itself.
        with _reachable():
            counter = await self._db[counters].find_one_and_update(
                {"_id": name}, {"$inc": {"value": by}}, upsert=True, return_document=ReturnDocument.AFTER
            )
        assert counter is not None  # an upsert returning the document AFTER always finds one
        return int(counter["value"])
