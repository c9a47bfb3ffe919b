"""Annolab's batch inference surface: request bodies (camelCase, as the seed shows) and the chunk message.

A job's sources are dispatched in chunks of `CHUNK_SIZE`, at most `CHUNKS_AHEAD` chunks beyond the finished
ones: a job of 10,000 sources never holds more than `CHUNK_SIZE` images in a consumer's memory at once, and
never puts more than `CHUNK_SIZE * CHUNKS_AHEAD` jobs ahead of interactive requests on the inference queue.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from schemas.common import Integer

CHUNK_SIZE = 50
CHUNKS_AHEAD = 2
MAX_SOURCES = 10_000


def chunk_count(total: int) -> int:
    return -(-total // CHUNK_SIZE)


def chunks_allowed(completed: int, total: int) -> int:
    """How many chunks may have been published once `completed` sources ended."""
    return min(chunk_count(total), completed // CHUNK_SIZE + CHUNKS_AHEAD)


def _digits(value: int | str, field: str) -> str:
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError(f"{field} must be an integer id")
    return str(int(text))


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)

    @field_validator("name")
    @classmethod
    def _not_digits(cls, value: str) -> str:
        # A project is named by its id or its name: an all-digit name would shadow ids.
        if value.strip().isdigit():
            raise ValueError("must not be only digits (ids are digits)")
        return value


class SourceUrl(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://", max_length=2000)
    name: str = Field(default="", max_length=200)


MAX_REGIONS = 500  # per source: a source's regions are replaced in one write
_EDGE = 1e-9  # float slack on "inside the image": 0.1 + 0.9 must count as 1


def _number(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


# A coordinate as a fraction of the image's width or height.
Fraction = Annotated[float, BeforeValidator(_number), Field(ge=0, le=1, allow_inf_nan=False)]


class TagCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=1000)

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class RegionIn(BaseModel):
    """A tagged box, normalized (Custom Vision's shape): left < left + width <= 1, top < top + height <= 1."""

    model_config = ConfigDict(extra="forbid")

    tagId: Integer | str
    left: Fraction
    top: Fraction
    width: Fraction
    height: Fraction

    @field_validator("tagId")
    @classmethod
    def _tag_id(cls, value: int | str) -> int | str:
        _digits(value, "tagId")
        return value

    def tag_id(self) -> str:
        return _digits(self.tagId, "tagId")

    @field_validator("width", "height")
    @classmethod
    def _inside(cls, value: float, info: ValidationInfo) -> float:
        start = "left" if info.field_name == "width" else "top"
        end = "right" if info.field_name == "width" else "bottom"
        if value <= 0:
            raise ValueError(f"must be above 0: the box's {start} must be before its {end}")
        origin = info.data.get(start)  # absent when itself invalid, which names it already
        if origin is not None and origin + value > 1 + _EDGE:
            raise ValueError(
                f"{start} + {info.field_name} is {origin + value:g}: the box leaves the image (at most 1)"
            )
        return value


class RegionsSet(BaseModel):
    """A source's regions, replacing those it had; an empty list removes them all."""

    model_config = ConfigDict(extra="forbid")

    regions: list[RegionIn] = Field(max_length=MAX_REGIONS)


class BatchInferenceRequest(BaseModel):
    """`groupName` is required by Annolab and accepted here, but the API key alone names the tenant."""

    model_config = ConfigDict(extra="forbid")

    projectIdentifier: str | Integer
    modelIdentifier: str | Integer
    sourceIds: list[Integer | str] = Field(min_length=1, max_length=MAX_SOURCES)
    outputLayerIdentifier: str | Integer
    groupName: str
    callbackUrl: str | None = Field(default=None, pattern=r"^https?://", max_length=2000)

    def source_ids(self) -> list[str]:
        """Distinct ids in request order: a source listed twice is predicted once."""
        ids = [_digits(value, "sourceIds") for value in self.sourceIds]
        return list(dict.fromkeys(ids))

    @field_validator("sourceIds")
    @classmethod
    def _check_ids(cls, values: list[int | str]) -> list[int | str]:
        for value in values:
            _digits(value, "sourceIds")
        return values


class BatchChunk(BaseModel):
    """One chunk of a batch job to dispatch: sources `[chunk * CHUNK_SIZE, (chunk + 1) * CHUNK_SIZE)`."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    kind: Literal["batch_chunk"] = "batch_chunk"
    job_id: str
    owner: str
    chunk: int = Field(ge=0)


def source_task_id(job_id: str, position: int) -> str:
    """Deterministic, so inserting the task claims the source: a chunk published twice dispatches it once."""
    return f"{job_id}.{position}"


def may_be_source_task(task_id: str) -> bool:
    """Whether `task_id` can be a batch job's source task (source_task_id's form): a single request's task
    cannot, so its outcome needs no look for a batch job."""
    return "." in task_id
