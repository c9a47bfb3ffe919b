"""Queue producers: the message a producer publishes to `percept.requests`, and the RPC reply it gets back.

The producer authenticates with its API key in the `x-api-key` message header. With the AMQP properties
`reply_to` (and `correlation_id`), the outcome comes back as a `ProducerReply`: the task once it finished,
or the refusal when no task was created (the message is then in `percept.requests.dead`).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from schemas.common import BBox, InlineBytes, Point, StrictModel
from schemas.documents import TaskStatus
from schemas.messages import JobImage
from schemas.webhooks import HttpUrl

API_KEY_HEADER = "x-api-key"
# The gateway's default for inline images (GatewayConfig.max_inline_image_bytes): the same image is
# accepted through either door.
MAX_IMAGE_BYTES = 20 * 1024 * 1024


def _id_text(value: object) -> object:
    # Deepomatic ids are integers in JSON, public demo specs have names ("digits"): both name a document.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


ResourceId = Annotated[
    str,
    BeforeValidator(_id_text),
    Field(min_length=1, max_length=64),
    WithJsonSchema({"type": ["string", "integer"]}),
]
# Decoded bytes are checked against the limit; the schema describes the base64 text a producer writes.
Base64Image = Annotated[
    InlineBytes,
    Field(max_length=MAX_IMAGE_BYTES),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]


class ProducerImage(StrictModel):
    url: HttpUrl | None = Field(default=None, description="fetched by a consumer (outbound policy applies)")
    data: Base64Image | None = Field(
        default=None, description="the image file's bytes (JPEG, PNG, GIF, BMP, WebP), base64; up to 20 MiB"
    )
    bbox: BBox | None = None
    polygon: list[Point] | None = Field(default=None, min_length=3)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.url is None) == (self.data is None):
            raise ValueError("give exactly one of image.url and image.data")
        return self

    def job_image(self) -> JobImage:
        return JobImage(url=self.url, data=self.data, bbox=self.bbox, polygon=self.polygon)


class ProducerRequest(StrictModel):
    """One recognition inference, published to exchange `percept` with routing key `percept.requests`."""

    model_config = ConfigDict(title="ProducerRequest")

    # Required, so that a producer written for a later version of this message is refused, not misread.
    schema_version: Literal[1]
    version_id: ResourceId | None = Field(default=None, description="a recognition version")
    spec_id: ResourceId | None = Field(
        default=None, description="a recognition spec (yours or public): its current version"
    )
    image: ProducerImage
    show_discarded: bool = False
    max_predictions: int = Field(default=100, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_model(self) -> Self:
        if (self.version_id is None) == (self.spec_id is None):
            raise ValueError("give exactly one of version_id and spec_id")
        return self


class ReplyStatus(str, Enum):
    SUCCESS = "success"  # the task succeeded: `data` holds its InferenceResult
    ERROR = "error"  # the task ended in error: `error` gives the reason
    REFUSED = "refused"  # no task was created (dead-lettered): `error` gives the reason


class ProducerReply(BaseModel):
    """Published to the request's `reply_to` queue, with its `correlation_id`."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    task_id: str | None = Field(description="null when the request was refused")
    status: ReplyStatus
    data: dict[str, Any] | None = None
    error: str | None = None

    @classmethod
    def of_task(
        cls, task_id: str, status: TaskStatus, *, data: dict[str, Any] | None, error: str | None
    ) -> ProducerReply:
        """A terminal task's reply (a pending task has none)."""
        replied = ReplyStatus.SUCCESS if status is TaskStatus.SUCCESS else ReplyStatus.ERROR
        return cls(task_id=task_id, status=replied, data=data, error=error)

    @classmethod
    def refused(cls, reason: str) -> ProducerReply:
        return cls(task_id=None, status=ReplyStatus.REFUSED, error=reason)
