"""The store port: typed documents in collections, conditional task completion, and model files.

Every adapter passes `tests/store/contract.py`. Documents are pydantic models; adapters keep them as JSON
(`model_dump(mode="json")`) and validate them back with the collection's model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from schemas.documents import (
    ApiKeyDoc,
    BatchChunkDoc,
    BatchJobDoc,
    BatchLinkDoc,
    Document,
    IdempotencyDoc,
    LayerDoc,
    NetworkDoc,
    OutboxDoc,
    PredictionDoc,
    ProjectDoc,
    RegionDoc,
    SourceDoc,
    SpecDoc,
    TagDoc,
    TaskDoc,
    TaskHookDoc,
    TaskOutcome,
    VersionDoc,
    WebhookAttemptDoc,
    WebhookEndpointDoc,
    WebhookSecretDoc,
)

D = TypeVar("D", bound=Document)


@dataclass(frozen=True)
class Collection(Generic[D]):
    name: str
    model: type[D]


API_KEYS = Collection("api_keys", ApiKeyDoc)
NETWORKS = Collection("networks", NetworkDoc)
SPECS = Collection("specs", SpecDoc)
VERSIONS = Collection("versions", VersionDoc)
TASKS = Collection("tasks", TaskDoc)
TASK_HOOKS = Collection("task_hooks", TaskHookDoc)
WEBHOOK_ENDPOINTS = Collection("webhook_endpoints", WebhookEndpointDoc)
WEBHOOK_SECRETS = Collection("webhook_secrets", WebhookSecretDoc)
WEBHOOK_ATTEMPTS = Collection("webhook_attempts", WebhookAttemptDoc)
IDEMPOTENCY = Collection("idempotency", IdempotencyDoc)
PROJECTS = Collection("projects", ProjectDoc)
SOURCES = Collection("sources", SourceDoc)
LAYERS = Collection("layers", LayerDoc)
TAGS = Collection("tags", TagDoc)
REGIONS = Collection("regions", RegionDoc)
BATCH_JOBS = Collection("batch_jobs", BatchJobDoc)
BATCH_LINKS = Collection("batch_links", BatchLinkDoc)
BATCH_CHUNKS = Collection("batch_chunks", BatchChunkDoc)
PREDICTIONS = Collection("predictions", PredictionDoc)
OUTBOX = Collection("outbox", OutboxDoc)
ALL_COLLECTIONS: tuple[Collection[Any], ...] = (
    API_KEYS,
    NETWORKS,
    SPECS,
    VERSIONS,
    TASKS,
    TASK_HOOKS,
    WEBHOOK_ENDPOINTS,
    WEBHOOK_SECRETS,
    WEBHOOK_ATTEMPTS,
    IDEMPOTENCY,
    PROJECTS,
    SOURCES,
    LAYERS,
    TAGS,
    REGIONS,
    BATCH_JOBS,
    BATCH_LINKS,
    BATCH_CHUNKS,
    PREDICTIONS,
    OUTBOX,
)


@dataclass(frozen=True)
class Expiring:
    """A collection whose documents are deleted once their `date_field` is older than the retention."""

    collection: Collection[Any]
    date_field: str


# Results and logs expire (PERCEPT_RETENTION_DAYS); what users created (networks, projects...) never does.
EXPIRING: tuple[Expiring, ...] = (
    Expiring(TASKS, "date_created"),
    Expiring(WEBHOOK_ATTEMPTS, "date"),
    Expiring(IDEMPOTENCY, "date"),
)


@dataclass(frozen=True)
class Page(Generic[D]):
    count: int  # all matches, not just this page
    items: list[D]


class StoreError(Exception):
    """Base of the store's errors."""


class DuplicateId(StoreError):
    """A document with that id already exists in the collection."""


class FileMissing(StoreError):
    """No file is stored under that key."""


class StoreUnavailable(StoreError):
    """The database cannot be reached; callers answer 503 or pause."""


Where = Mapping[str, str | int | bool | None]
# Documents of one collection, for a write that spans several (Store.insert_together).
Batch = tuple[Collection[Any], Sequence[Document]]


class Store(ABC):
    """Documents are scoped by owner: reads take the owners a caller may see, writes the one it acts as."""

    # Outbox bodies (store.outbox) longer than this are kept as files, not inline in their records. A
    # MongoDB document holds at most 16 MB, and a file costs it more round trips than an inline body.
    outbox_inline_bytes = 1024 * 1024

    @abstractmethod
    async def next_id(self, counter: str) -> str:
        """A decimal string, strictly increasing per counter, unique across processes sharing the store."""

    @abstractmethod
    async def reserve_ids(self, counter: str, count: int) -> range:
        """`count` consecutive values of `counter` in one write, none of which `next_id` or another
        reservation (in any process sharing the store) hands out: ids to render as decimal strings. Values a
        process reserves and never uses are skipped, so ids are unique, not dense."""

    @abstractmethod
    async def insert(self, collection: Collection[D], doc: D) -> None:
        """Raises DuplicateId if `doc.id` exists."""

    @abstractmethod
    async def insert_many(self, collection: Collection[D], docs: Sequence[D]) -> None:
        """One write for many new documents, kept in the given order for `find`.

        Raises DuplicateId if any id exists (or repeats); which of the others were then inserted is
        unspecified, so callers give fresh ids only.
        """

    @abstractmethod
    async def insert_together(self, batches: Sequence[Batch]) -> None:
        """Documents of several collections in one write, in the given order. SQLite: one transaction, all or
        none. MongoDB: one insert per batch, so a failure keeps the batches before it (order them so that
        this is safe). Raises DuplicateId if any id exists."""

    @abstractmethod
    async def get(self, collection: Collection[D], doc_id: str, *, owners: Sequence[str]) -> D | None: ...

    @abstractmethod
    async def get_many(
        self, collection: Collection[D], ids: Sequence[str], *, owners: Sequence[str]
    ) -> list[D]:
        """One round trip; results in the order of `ids`, unknown or foreign ids skipped."""

    @abstractmethod
    async def find(
        self,
        collection: Collection[D],
        *,
        owners: Sequence[str],
        where: Where | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Page[D]:
        """Equality match on top-level fields; oldest inserted first."""

    @abstractmethod
    async def sweep(self, collection: Collection[D], *, where: Where, limit: int = 1000) -> list[D]:
        """Matches across every owner, oldest first: for maintenance at start-up, never for API reads."""

    @abstractmethod
    async def update(
        self,
        collection: Collection[D],
        doc_id: str,
        *,
        owner: str,
        changes: Mapping[str, Any],
        expect: Where | None = None,
    ) -> D | None:
        """Set top-level fields (python values, validated by the model); None if absent or foreign.

        With `expect`, atomically: only if those fields hold those (JSON) values now, else None.
        """

    @abstractmethod
    async def delete(self, collection: Collection[D], doc_id: str, *, owner: str) -> bool: ...

    @abstractmethod
    async def delete_where(self, collection: Collection[D], *, owner: str, where: Where) -> int: ...

    @abstractmethod
    async def replace_where(
        self, collection: Collection[D], *, owner: str, where: Where, docs: Sequence[D]
    ) -> int:
        """Delete the owner's documents matching `where` and insert `docs` (new ids, the owner's, meant to
        match `where`) as one change; returns how many were deleted. Raises DuplicateId, changing nothing.

        Of concurrent replacements, one whole set stays. SQLite, and MongoDB on a replica set or sharded
        cluster: one transaction, so readers see the old documents or the new ones. MongoDB standalone (no
        transactions): `docs` are inserted, then the matching documents inserted before them deleted (and
        `docs` withdrawn if a concurrent replacement inserted after them); a reader in between may see both
        sets, and a crash in between leaves both (nothing is lost; the next replacement removes the older).
        """

    @abstractmethod
    async def delete_many(self, collection: Collection[D], ids: Sequence[str], *, owner: str) -> int:
        """One round trip; unknown or foreign ids are skipped."""

    @abstractmethod
    async def purge_expired(self, expiring: Expiring, *, before: datetime, limit: int = 1000) -> int:
        """Delete up to `limit` documents, across owners, whose `expiring.date_field` is before `before`."""

    @abstractmethod
    async def finish_tasks(self, outcomes: Sequence[TaskOutcome]) -> int:
        """Move pending tasks to their terminal state in one bulk write; a terminal task never changes.

        Returns how many tasks moved; outcomes for already finished or unknown tasks are ignored.
        """

    @abstractmethod
    async def put_file(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Store `data` under `key`, replacing any file there; readers see the old bytes or the new, whole.

        `durable=False`: the bytes must survive this process, not necessarily the machine's power (as the
        SQLite adapter's own commits may not); an adapter may then skip flushing them to disk.
        """

    @abstractmethod
    async def get_file(self, key: str) -> bytes:
        """Raises FileMissing."""

    @abstractmethod
    async def delete_files(self, prefix: str) -> int: ...

    @abstractmethod
    async def delete_file_keys(self, keys: Sequence[str]) -> int:
        """Delete exactly the files `keys` name (not by prefix), in one call; missing ones are skipped.
        Returns how many were deleted. For many small files: the outbox's bodies, deleted by the burst."""

    @abstractmethod
    async def ping(self) -> None:
        """Raises StoreUnavailable when the database cannot answer."""

    @abstractmethod
    async def close(self) -> None: ...


def network_file_key(network_id: str, path: str) -> str:
    """Where a network's file lives in the store; `path` is relative to its SavedModel folder."""
    return f"networks/{network_id}/{path}"


def outbox_file_key(message_id: str) -> str:
    # The suffix keeps one key from being a prefix of another's (outbox/12 of outbox/123): files are
    # deleted by prefix.
    return f"outbox/{message_id}.job"


def source_file_key(project_id: str, source_id: str) -> str:
    return f"sources/{project_id}/{source_id}"
