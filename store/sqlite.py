"""The SQLite adapter: the embedded default, and one machine's gateway and consumers sharing one file.

Each collection is a table of JSON bodies in insertion order. Processes coordinate through SQLite's own
locks (WAL: readers never wait for the writer; writers queue for up to `BUSY_TIMEOUT_MS`).

The connection lives on a thread of its own, and each store call runs there as one function, all its
statements together: one hop off the event loop per call (not one per statement, as aiosqlite made it), and
calls cannot interleave, so no lock is needed around a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from schemas.documents import TaskOutcome, TaskStatus
from store.codec import (
    apply_changes,
    check_page,
    check_where,
    encode,
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
T = TypeVar("T")


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


def _enter_wal(db: sqlite3.Connection) -> None:
    """Switch the file to WAL. Seen when a gateway and its consumers start together on a new file: SQLite
    answered "database is locked" to this pragma at once, without waiting out the busy timeout (it does so
    where waiting could deadlock two connections that both hold a shared lock). Retry for as long as the busy
    timeout would have waited."""
    attempts = BUSY_TIMEOUT_MS // _WAL_RETRY_MS
    for attempt in range(attempts):
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(_WAL_RETRY_MS / 1000)  # on the connection's thread, not the event loop


def _prepare(db: sqlite3.Connection) -> None:
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _enter_wal(db)
    # WAL + NORMAL: fsync at checkpoints only; a power cut may lose recent commits, not the file.
    db.execute("PRAGMA synchronous = NORMAL")
    with _transaction(db):
        for statement in _SCHEMA:
            db.execute(statement)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """IMMEDIATE takes the write lock up front, so a transaction never fails half-way upgrading it."""
    db.execute(begin)
    try:
        yield db
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _insert_sql(collection: Collection[Any]) -> str:
    return f"INSERT INTO {_table(collection)} (id, owner, body) VALUES (?, ?, ?)"


def _insert_rows(
    db: sqlite3.Connection, statements: Sequence[tuple[str, list[tuple[str, str, str]]]]
) -> None:
    with _transaction(db):
        for sql, rows in statements:
            db.executemany(sql, rows)


def _change(sql: str, params: Sequence[object], db: sqlite3.Connection) -> int:
    return db.execute(sql, params).rowcount


def _fetch(sql: str, params: Sequence[object], db: sqlite3.Connection) -> list[Any]:
    return db.execute(sql, params).fetchall()


class SqliteStore(Store):
    # A 127 KB body as a row cost about 0.5 ms of CPU (its overflow pages through the WAL, the checkpoint
    # and the free list on deletion); as an unflushed file, about 0.1 ms.
    outbox_inline_bytes = 16 * 1024

    def __init__(self, db: sqlite3.Connection, thread: ThreadPoolExecutor, files: DiskFiles) -> None:
        self._db = db
        self._thread = thread  # one worker: the only thread that touches `db`
        self._files = files

    @classmethod
    async def open(cls, path: Path, files_dir: Path) -> SqliteStore:
        for folder in (path.parent, files_dir):
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        loop = asyncio.get_running_loop()
        try:
            with _available():
                # isolation_level=None: we issue BEGIN ourselves; the connection is used by `thread` only.
                db = await loop.run_in_executor(
                    thread,
                    functools.partial(sqlite3.connect, path, isolation_level=None, check_same_thread=False),
                )
        except BaseException:
            thread.shutdown(wait=False)
            raise
        store = cls(db, thread, DiskFiles(files_dir))
        try:
            await store._run(_prepare)
        except BaseException:
            await store.close()
            raise
        return store

    async def next_id(self, counter: str) -> str:
        return str((await self.reserve_ids(counter, 1)).start)

    async def reserve_ids(self, counter: str, count: int) -> range:
        if count < 1:
            raise ValueError(f"reserve at least one id, not {count}")
        # One statement is one transaction: atomic across processes without an explicit BEGIN.
        rows = await self._fetch(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value RETURNING value",
            (counter, count),
        )
        last = int(rows[0][0])
        return range(last - count + 1, last + 1)

    async def insert(self, collection: Collection[D], doc: D) -> None:
        body = encode(doc)
        try:
            await self._change(
                _insert_sql(collection),
                (doc.id, doc.owner, body),
            )
        except sqlite3.IntegrityError as error:
            raise DuplicateId(f"{collection.name}/{doc.id}") from error

    async def insert_many(self, collection: Collection[D], docs: Sequence[D]) -> None:
        if not docs:
            return
        rows = [(doc.id, doc.owner, encode(doc)) for doc in docs]
        try:
            # One transaction: all rows or, on a duplicate, none.
            await self._run(
                functools.partial(
                    _insert_rows,
                    statements=[(_insert_sql(collection), rows)],
                )
            )
        except sqlite3.IntegrityError as error:
            raise DuplicateId(f"{collection.name}: {error}") from error

    async def insert_together(self, batches: Sequence[Batch]) -> None:
        statements = [
            (
                _insert_sql(collection),
                [(doc.id, doc.owner, encode(doc)) for doc in docs],
            )
            for collection, docs in batches
            if docs
        ]
        if not statements:
            return
        try:
            await self._run(functools.partial(_insert_rows, statements=statements))
        except sqlite3.IntegrityError as error:
            raise DuplicateId(str(error)) from error

    async def get(self, collection: Collection[D], doc_id: str, *, owners: Sequence[str]) -> D | None:
        found = await self.get_many(collection, [doc_id], owners=owners)
        return found[0] if found else None

    async def get_many(
        self, collection: Collection[D], ids: Sequence[str], *, owners: Sequence[str]
    ) -> list[D]:
        clause, params = _matching(owners, {})
        rows = await self._fetch(
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

        def count_and_page(db: sqlite3.Connection) -> tuple[int, list[Any]]:
            # A read transaction, so the count and the page come from the same snapshot.
            with _transaction(db, "BEGIN DEFERRED"):
                counted = db.execute(f"SELECT COUNT(*) FROM {table} WHERE {clause}", params).fetchone()
                rows = db.execute(
                    f"SELECT body FROM {table} WHERE {clause} ORDER BY seq LIMIT ? OFFSET ?",
                    [*params, limit, offset],
                ).fetchall()
            return int(counted[0]), rows

        count, rows = await self._run(count_and_page)
        items = [collection.model.model_validate_json(body) for (body,) in rows]
        return Page(count=count, items=items)

    async def sweep(self, collection: Collection[D], *, where: Where, limit: int = 1000) -> list[D]:
        check_page(0, limit)
        clause, params = _matching(None, check_where(collection, where))
        rows = await self._fetch(
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

        def read_and_write(db: sqlite3.Connection) -> D | None:
            # IMMEDIATE: the write lock is held from the read on, so no other process updates in between.
            with _transaction(db):
                row = db.execute(
                    f"SELECT body FROM {table} WHERE id = ? AND owner = ?", (doc_id, owner)
                ).fetchone()
                if row is None:
                    return None
                current = collection.model.model_validate_json(row[0])
                if not expectation_met(collection, current, expect):
                    return None
                updated = apply_changes(collection, current, changes)
                db.execute(
                    f"UPDATE {table} SET body = ? WHERE id = ?",
                    (encode(updated), doc_id),
                )
            return updated

        return await self._run(read_and_write)

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

    async def replace_where(
        self, collection: Collection[D], *, owner: str, where: Where, docs: Sequence[D]
    ) -> int:
        table = _table(collection)
        clause, params = _matching([owner], check_where(collection, where))
        rows = [(doc.id, doc.owner, encode(doc)) for doc in docs]

        def replace(db: sqlite3.Connection) -> int:
            with _transaction(db):
                deleted = db.execute(f"DELETE FROM {table} WHERE {clause}", params).rowcount
                db.executemany(_insert_sql(collection), rows)
            return int(deleted)

        try:
            return await self._run(replace)
        except sqlite3.IntegrityError as error:
            raise DuplicateId(f"{collection.name}: {error}") from error

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

        def finish(db: sqlite3.Connection) -> int:
            with _transaction(db):
                return int(db.executemany(_FINISH_TASK, rows).rowcount)  # summed over the rows

        return await self._run(finish)

    async def put_file(self, key: str, data: bytes, *, durable: bool = True) -> None:
        await self._files.put(key, data, durable=durable)

    async def get_file(self, key: str) -> bytes:
        return await self._files.get(key)

    async def delete_files(self, prefix: str) -> int:
        return await self._files.delete(prefix)

    async def delete_file_keys(self, keys: Sequence[str]) -> int:
        return await self._files.delete_keys(keys)

    async def ping(self) -> None:
        await self._fetch("SELECT 1", ())

    async def close(self) -> None:
        try:
            await self._run(sqlite3.Connection.close)
        finally:
            self._thread.shutdown(wait=False)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` on the connection's thread; its SQLite errors as the port's."""
        with _available():
            return await asyncio.get_running_loop().run_in_executor(self._thread, work, self._db)

    async def _change(self, sql: str, params: Sequence[object]) -> int:
        return await self._run(functools.partial(_change, sql, params))

    async def _fetch(self, sql: str, params: Sequence[object]) -> list[Any]:
        return await self._run(functools.partial(_fetch, sql, params))
