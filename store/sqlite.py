"""The SQLite adapter: the embedded default, and one machine's gateway and consumers sharing one file.

Each collection is a table of JSON bodies in insertion order. Processes coordinate through SQLite's own
locks (WAL: readers never wait for the writer; writers queue for up to `BUSY_TIMEOUT_MS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from schemas.documents import TaskOutcome, TaskStatus
from store.codec import (
    apply_changes,
    check_page,
    check_where,
    expectation_met,
    finished_fields,
    json_datetime,
)
from store.disk_files import DiskFiles
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

# Writes are short; a writer still waiting after this long means the file is stuck, not busy.
BUSY_TIMEOUT_MS = 5000
_WAL_RETRY_MS = 50

# Primary result codes meaning "the database cannot serve now" rather than "this statement is wrong".
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
_TABLES = frozenset(collection.name for collection in ALL_COLLECTIONS)


def _expiry(expiring: Expiring) -> str:
    # Interpolated into SQL: a field of the collection's model, never user input.
    if expiring.date_field not in expiring.collection.model.model_fields:
        raise ValueError(f"{expiring.collection.name} has no field {expiring.date_field!r}")
    return f"json_extract(body, '$.\"{expiring.date_field}\"')"


# `seq` (AUTOINCREMENT, never reused) gives insertion order in the same statement that inserts the row;
# `id` is UNIQUE instead of the primary key, which SQLite enforces just the same.
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    *(
        statement
        for name in sorted(_TABLES)
        for statement in (
            f"CREATE TABLE IF NOT EXISTS {name} (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL, body TEXT NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {name}_owner ON {name} (owner, seq)",
        )
    ),
    # The purge's expression, spelled the same, so that the purge is an index range scan.
    *(
        f"CREATE INDEX IF NOT EXISTS {e.collection.name}_expiry ON {e.collection.name} ({_expiry(e)})"
        for e in EXPIRING
    ),
]

_FINISH_TASK = f"""
    UPDATE {TASKS.name}
    SET body = json_set(body, '$.status', ?, '$.data', json(?), '$.error', ?, '$.date_updated', ?)
    WHERE id = ? AND json_extract(body, '$.status') = '{TaskStatus.PENDING.value}'
"""


@contextlib.contextmanager
def _available() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode & 0xFF in _UNAVAILABLE_CODES:
            raise StoreUnavailable(f"sqlite: {error}") from error
        raise


def _table(collection: Collection[Any]) -> str:
    # Table names are interpolated into SQL: only the port's own collections may reach it.
    if collection.name not in _TABLES:
        raise ValueError(f"unknown collection {collection.name!r}")
    return collection.name


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


def _matching(owners: Sequence[str] | None, where: Mapping[str, object]) -> tuple[str, list[object]]:
    """A WHERE clause: one of `owners` (None: any), and each field equal (`IS`, so None matches JSON null)."""
    clause = "1 = 1" if owners is None else f"owner IN ({_marks(owners)})"
    params: list[object] = [] if owners is None else list(owners)
    for field, value in where.items():
        clause += " AND json_extract(body, ?) IS ?"
        params += [f'$."{field}"', value]
    return clause, params


async def _enter_wal(db: aiosqlite.Connection) -> None:
    """Switch the file to WAL. Seen when a gateway and its consumers start together on a new file: SQLite
    answered "database is locked" to this pragma at once, without waiting out the busy timeout (it does so
    where waiting could deadlock two connections that both hold a shared lock). Retry for as long as the busy
    timeout would have waited."""
    attempts = BUSY_TIMEOUT_MS // _WAL_RETRY_MS
    for attempt in range(attempts):
        try:
            await db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            await asyncio.sleep(_WAL_RETRY_MS / 1000)


class SqliteStore(Store):
    # A 127 KB body as a row cost about 0.5 ms of CPU (its overflow pages through the WAL, the checkpoint
    # and the free list on deletion); as an unflushed file, about 0.1 ms.
    outbox_inline_bytes = 16 * 1024

    def __init__(self, db: aiosqlite.Connection, files: DiskFiles) -> None:
        self._db = db
        self._files = files
        # One connection serves all of this process's coroutines: a transaction must not interleave with
        # another coroutine's statements.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, files_dir: Path) -> SqliteStore:
        for folder in (path.parent, files_dir):
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        with _available():
            db = await aiosqlite.connect(path, isolation_level=None)  # we issue BEGIN ourselves
        store = cls(db, DiskFiles(files_dir))
        try:
            async with store._session():
                await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                await _enter_wal(db)
                # WAL + NORMAL: fsync at checkpoints only; a power cut may lose recent commits, not the file.
                await db.execute("PRAGMA synchronous = NORMAL")
            async with store._transaction() as db:
                for statement in _SCHEMA:
                    await db.execute(statement)
        except BaseException:
            await db.close()
            raise
        return store

    async def next_id(self, counter: str) -> str:
        return str((await self.reserve_ids(counter, 1)).start)

    async def reserve_ids(self, counter: str, count: int) -> range:
        if count < 1:
            raise ValueError(f"reserve at least one id, not {count}")
        # One statement is one transaction: atomic across processes without an explicit BEGIN.
        async with self._session() as db:
            rows = await db.execute_fetchall(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value RETURNING value",
                (counter, count),
            )
        last = int(next(iter(rows))[0])
        return range(last - count + 1, last + 1)

    async def insert(self, collection: Collection[D], doc: D) -> None:
        body = json.dumps(doc.model_dump(mode="json"))
        async with self._session() as db:
            try:
                await db.execute(
                    f"INSERT INTO {_table(collection)} (id, owner, body) VALUES (?, ?, ?)",
                    (doc.id, doc.owner, body),
                )
            except sqlite3.IntegrityError as error:
                raise DuplicateId(f"{collection.name}/{doc.id}") from error

    async def insert_many(self, collection: Collection[D], docs: Sequence[D]) -> None:
        if not docs:
            return
        rows = [(doc.id, doc.owner, json.dumps(doc.model_dump(mode="json"))) for doc in docs]
        try:
            # One transaction: all rows or, on a duplicate, none.
            async with self._transaction() as db:
                await db.executemany(
                    f"INSERT INTO {_table(collection)} (id, owner, body) VALUES (?, ?, ?)", rows
                )
        except sqlite3.IntegrityError as error:
            raise DuplicateId(f"{collection.name}: {error}") from error

    async def insert_together(self, batches: Sequence[Batch]) -> None:
        statements = [
            (
                f"INSERT INTO {_table(collection)} (id, owner, body) VALUES (?, ?, ?)",
                [(doc.id, doc.owner, json.dumps(doc.model_dump(mode="json"))) for doc in docs],
            )
            for collection, docs in batches
            if docs
        ]
        if not statements:
            return
        try:
            async with self._transaction() as db:
                for sql, rows in statements:
                    await db.executemany(sql, rows)
        except sqlite3.IntegrityError as error:
            raise DuplicateId(str(error)) from error

    async def get(self, collection: Collection[D], doc_id: str, *, owners: Sequence[str]) -> D | None:
        found = await self.get_many(collection, [doc_id], owners=owners)
        return found[0] if found else None

    async def get_many(
        self, collection: Collection[D], ids: Sequence[str], *, owners: Sequence[str]
    ) -> list[D]:
        clause, params = _matching(owners, {})
        async with self._session() as db:
            rows = await db.execute_fetchall(
                f"SELECT id, body FROM {_table(collection)} WHERE id IN ({_marks(ids)}) AND {clause}",
                [*ids, *params],
            )
        bodies = {doc_id: body for doc_id, body in rows}
        return [collection.model.model_validate_json(bodies[i]) for i in ids if i in bodies]

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
        clause, params = _matching(owners, check_where(collection, where))
        table = _table(collection)
        # A read transaction, so the count and the page come from the same snapshot.
        async with self._transaction("BEGIN DEFERRED") as db:
            counted = await db.execute_fetchall(f"SELECT COUNT(*) FROM {table} WHERE {clause}", params)
            rows = await db.execute_fetchall(
                f"SELECT body FROM {table} WHERE {clause} ORDER BY seq LIMIT ? OFFSET ?",
                [*params, limit, offset],
            )
        items = [collection.model.model_validate_json(body) for (body,) in rows]
        return Page(count=next(iter(counted))[0], items=items)

    async def sweep(self, collection: Collection[D], *, where: Where, limit: int = 1000) -> list[D]:
        check_page(0, limit)
        clause, params = _matching(None, check_where(collection, where))
        async with self._transaction("BEGIN DEFERRED") as db:
            rows = await db.execute_fetchall(
                f"SELECT body FROM {_table(collection)} WHERE {clause} ORDER BY seq LIMIT ?", [*params, limit]
            )
        return [collection.model.model_validate_json(body) for (body,) in rows]

    async def update(
        self,
        collection: Collection[D],
        doc_id: str,
        *,
        owner: str,
        changes: Mapping[str, Any],
        expect: Where | None = None,
    ) -> D | None:
        table = _table(collection)
        # IMMEDIATE: the write lock is held from the read on, so no other process updates in between.
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    f"SELECT body FROM {table} WHERE id = ? AND owner = ?", (doc_id, owner)
                )
            )
            if not rows:
                return None
            current = collection.model.model_validate_json(rows[0][0])
            if not expectation_met(collection, current, expect):
                return None
            updated = apply_changes(collection, current, changes)
            await db.execute(
                f"UPDATE {table} SET body = ? WHERE id = ?",
                (json.dumps(updated.model_dump(mode="json")), doc_id),
            )
        return updated

    async def delete(self, collection: Collection[D], doc_id: str, *, owner: str) -> bool:
        return (
            await self._change(
                f"DELETE FROM {_table(collection)} WHERE id = ? AND owner = ?", (doc_id, owner)
            )
            > 0
        )

    async def delete_where(self, collection: Collection[D], *, owner: str, where: Where) -> int:
        clause, params = _matching([owner], check_where(collection, where))
        return await self._change(f"DELETE FROM {_table(collection)} WHERE {clause}", params)

    async def delete_many(self, collection: Collection[D], ids: Sequence[str], *, owner: str) -> int:
        if not ids:
            return 0
        return await self._change(
            f"DELETE FROM {_table(collection)} WHERE id IN ({_marks(ids)}) AND owner = ?", [*ids, owner]
        )

    async def purge_expired(self, expiring: Expiring, *, before: datetime, limit: int = 1000) -> int:
        check_page(0, limit)
        table, moment = _table(expiring.collection), _expiry(expiring)
        return await self._change(
            f"DELETE FROM {table} WHERE seq IN"
            f" (SELECT seq FROM {table} WHERE {moment} < ? ORDER BY {moment} LIMIT ?)",
            (json_datetime(before), limit),
        )

    async def finish_tasks(self, outcomes: Sequence[TaskOutcome]) -> int:
        rows = []
        for outcome in outcomes:
            fields = finished_fields(outcome)
            rows.append(
                (
                    fields["status"],
                    json.dumps(fields["data"]),
                    fields["error"],
                    fields["date_updated"],
                    outcome.task_id,
                )
            )
        if not rows:
            return 0  # not worth taking the write lock for
        async with self._transaction() as db, db.executemany(_FINISH_TASK, rows) as cursor:
            return int(cursor.rowcount)  # summed over the rows by executemany

    async def put_file(self, key: str, data: bytes, *, durable: bool = True) -> None:
        await self._files.put(key, data, durable=durable)

    async def get_file(self, key: str) -> bytes:
        return await self._files.get(key)

    async def delete_files(self, prefix: str) -> int:
        return await self._files.delete(prefix)

    async def ping(self) -> None:
        async with self._session() as db:
            await db.execute_fetchall("SELECT 1")

    async def close(self) -> None:
        await self._db.close()

    async def _change(self, sql: str, params: Sequence[object]) -> int:
        async with self._session() as db, db.execute(sql, params) as cursor:
            return int(cursor.rowcount)

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            with _available():
                yield self._db

    @contextlib.asynccontextmanager
    async def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> AsyncIterator[aiosqlite.Connection]:
        """IMMEDIATE takes the write lock up front, so a transaction never fails half-way upgrading it."""
        async with self._session() as db:
            await db.execute(begin)
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")
