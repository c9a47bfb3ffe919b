"""What both adapters do to documents before storing them: filters, changes and task outcomes, as JSON."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import TypeAdapter

from schemas.common import utc_now
from schemas.documents import Document, TaskOutcome, TaskStatus
from store.port import Collection, D, Where

JsonScalar = str | int | bool | None

# Fields that place a document (its key and its tenant); changing them would be a move, not an update.
_IMMUTABLE_FIELDS = frozenset({"id", "owner"})
_DATETIME = TypeAdapter(datetime)


def check_where(collection: Collection[Any], where: Where | None) -> dict[str, JsonScalar]:
    """The filter with enum members as their values; unknown fields raise, as they are typos, not misses."""
    if not where:
        return {}
    _check_fields(collection, where)
    return {field: value.value if isinstance(value, Enum) else value for field, value in where.items()}


def check_page(offset: int, limit: int) -> None:
    if offset < 0 or limit < 0:
        raise ValueError(f"offset and limit must not be negative, got offset={offset} limit={limit}")


def apply_changes(collection: Collection[D], doc: D, changes: Mapping[str, Any]) -> D:
    """The document with `changes` set, validated by the collection's model (raises ValidationError)."""
    _check_fields(collection, changes)
    if moved := _IMMUTABLE_FIELDS & changes.keys():
        raise ValueError(f"{collection.name}: {sorted(moved)} cannot be changed")
    return collection.model.model_validate({**doc.model_dump(), **changes})


def finished_fields(outcome: TaskOutcome) -> dict[str, Any]:
    """The JSON fields a finished task gets; a pending outcome is a caller bug, not a no-op."""
    if outcome.status is TaskStatus.PENDING:
        raise ValueError(f"task {outcome.task_id}: an outcome must be terminal, not pending")
    fields = outcome.model_dump(mode="json", include={"status", "data", "error"})
    fields["date_updated"] = json_datetime(utc_now())
    return fields


def encode(doc: Document) -> str:
    """A document as the SQLite adapter stores it: pydantic's own JSON, which is valid JSON even for
    non-finite floats (Document's ser_json_inf_nan), and about a fifth of json.dumps(model_dump())'s cost."""
    return doc.model_dump_json()


def json_datetime(moment: datetime) -> str:
    """A datetime as the adapters keep it in JSON bodies (ISO 8601, UTC): comparable as a string."""
    stored: str = _DATETIME.dump_python(moment, mode="json")
    return stored


def expectation_met(collection: Collection[D], doc: D, expect: Where | None) -> bool:
    """Whether `doc` holds every value `expect` names, compared as the adapters store them (JSON)."""
    stored = doc.model_dump(mode="json")
    return all(stored.get(field) == value for field, value in check_where(collection, expect).items())


def _check_fields(collection: Collection[Any], fields: Mapping[str, Any]) -> None:
    if unknown := fields.keys() - collection.model.model_fields.keys():
        raise ValueError(f"{collection.name} has no field(s) {sorted(unknown)}")
