"""Documents as the store keeps them. Every document has an `id` and the `owner` (tenant) it belongs to."""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import utc_now
from schemas.messages import ModelRef
from schemas.networks import Framework, NetworkPostprocessing, NetworkStatus, Preprocessing
from schemas.signature import Signature
from schemas.specs import SpecOutput
from schemas.versions import PostProcessing
from schemas.webhooks import WebhookEvent

PUBLIC_OWNER = "public"
KEYS_OWNER = "keys"  # API keys are looked up before the tenant is known


class Document(BaseModel):
    # Stored as JSON by model_dump_json (the SQLite adapter): a non-finite float (a multipart field may say
    # "NaN") is written as the string "NaN" / "Infinity", which reads back as the same float. The default,
    # null, would not read back into a float field; json.dumps's bare NaN is not JSON, and SQLite's JSON
    # functions then refuse every query that reads the row.
    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="strings")

    id: str
    owner: str


class ApiKeyDoc(Document):
    """`id` is the SHA-256 of the key: keys are never stored in clear. `owner` is always KEYS_OWNER.

    `prefix` and `last_four` let a person tell keys apart in a list; keys made before they existed have "".
    """

    tenant: str
    name: str = ""
    prefix: str = ""
    last_four: str = ""
    created: datetime = Field(default_factory=utc_now)


class NetworkDoc(Document):
    name: str
    description: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    framework: Framework
    preprocessing: Preprocessing
    postprocessings: list[NetworkPostprocessing] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    status: NetworkStatus = NetworkStatus.DEPLOYING
    task_id: str
    signature: Signature | None = Field(default=None, description="inputs and outputs found at deployment")
    create_date: datetime = Field(default_factory=utc_now)
    update_date: datetime = Field(default_factory=utc_now)
    # The deployment's lease: whoever holds the token works on it until `lease_until`, renewing as it goes.
    lease_token: str | None = None
    lease_until: datetime | None = None
    deploy_attempts: int = 0
    deploy_error: str | None = None


class SpecDoc(Document):
    name: str
    description: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    outputs: list[SpecOutput]
    current_version_id: int | None = None
    create_date: datetime = Field(default_factory=utc_now)
    update_date: datetime = Field(default_factory=utc_now)


class VersionDoc(Document):
    spec_id: str
    network_id: str
    post_processings: list[PostProcessing]
    create_date: datetime = Field(default_factory=utc_now)
    update_date: datetime = Field(default_factory=utc_now)


class TaskStatus(str, Enum):
    PENDING = "pending"  # accepted, not finished
    SUCCESS = "success"  # terminal: data holds the result
    ERROR = "error"  # terminal: error holds the reason


class TaskKind(str, Enum):
    INFERENCE = "inference"  # a recognition or network inference
    DEPLOYMENT = "deployment"  # validation of an uploaded network
    BATCH = "batch"  # an Annolab batch job over stored sources: ends once every source's task ended


class TaskDoc(Document):
    kind: TaskKind
    status: TaskStatus = TaskStatus.PENDING
    error: str | None = None
    # Redelivered jobs run alone, counted here: a job whose lone runs keep ending the consumer is the culprit.
    isolated_runs: int = 0
    data: dict[str, Any] | None = None
    callback_url: str | None = None
    # A multi-input inference: how many inputs, each run as its own subtask (`subtask_id`).
    inputs: int | None = None
    # A subtask: the multi-input task whose data gathers this one's result.
    parent_id: str | None = None
    date_created: datetime = Field(default_factory=utc_now)
    date_updated: datetime = Field(default_factory=utc_now)

    def subtask_ids(self) -> list[str] | None:
        return None if self.inputs is None else [subtask_id(self.id, index) for index in range(self.inputs)]


def subtask_id(task_id: str, index: int) -> str:
    """A multi-input task's subtask for input `index`: derived, so the whole family is read by id."""
    return f"{task_id}.{index}"


class TaskOutcome(BaseModel):
    """A terminal state for one task, as a consumer writes it."""

    task_id: str
    status: TaskStatus
    data: dict[str, Any] | None = None
    error: str | None = None


HOOKS_OWNER = "hooks"  # task hooks are looked up by task id before the tenant is known
OUTBOX_OWNER = "outbox"  # swept across tenants by the consumers' maintenance


class TaskHookDoc(Document):
    """A pending task whose end may send webhooks; `id` is the task's id. `owner` is always HOOKS_OWNER.

    Written at submission, so a consumer finds a batch's hooked tasks in one read by id, across tenants.
    """

    tenant: str
    callback_url: str | None = None


class WebhookEndpointDoc(Document):
    url: str
    events: list[WebhookEvent]
    secret: str
    description: str = ""
    enabled: bool = True
    disabled_reason: str | None = None
    create_date: datetime = Field(default_factory=utc_now)
    update_date: datetime = Field(default_factory=utc_now)


class WebhookSecretDoc(Document):
    """The account's default secret, for `callback_url` deliveries; `id` is the tenant."""

    secret: str


class AttemptResult(str, Enum):
    DELIVERED = "delivered"  # the receiver answered 2xx
    RETRYING = "retrying"  # failed; another attempt is scheduled
    FAILED = "failed"  # failed, and the retry schedule is used up
    GONE = "gone"  # the receiver answered 410: its endpoint is disabled, no retry
    REFUSED = "refused"  # the outbound policy refused the address: no retry


class WebhookAttemptDoc(Document):
    """One HTTP attempt of one delivery; `id` is `<message_id>.<attempt>`."""

    message_id: str
    endpoint_id: str | None  # None: the request's callback_url
    task_id: str
    event: WebhookEvent
    url: str
    attempt: int
    result: AttemptResult
    status_code: int | None = None
    error: str | None = None
    duration_ms: float
    next_attempt_s: float | None = None
    date: datetime = Field(default_factory=utc_now)


class IdempotencyDoc(Document):
    """A submission made with an `Idempotency-Key` (or a queue producer's message id); `id` hashes the tenant
    and the key."""

    task_id: str
    fingerprint: str  # hashes the route and the request, so a key reused for another request is caught
    date: datetime = Field(default_factory=utc_now)

    @staticmethod
    def id_for(owner: str, key: str) -> str:
        return hashlib.sha256(f"{owner}\0{key}".encode()).hexdigest()


class ProjectDoc(Document):
    """A dataset: sources (images), tags, and regions (a tag on a box of a source), which Custom Vision
    training projects reuse.

    `name` is unique per owner, so a project is named by its id or its name (Annolab's projectIdentifier).
    """

    name: str
    create_date: datetime = Field(default_factory=utc_now)


class SourceDoc(Document):
    """One image of a project: bytes in the store's files under `file_key`, or a URL a consumer fetches."""

    project_id: str
    name: str = ""
    file_key: str | None = None
    url: str | None = None
    content_type: str | None = None
    create_date: datetime = Field(default_factory=utc_now)


class LayerDoc(Document):
    """A named set of annotations in a project; batch jobs write their predictions into one."""

    project_id: str
    name: str
    create_date: datetime = Field(default_factory=utc_now)


class TagDoc(Document):
    """A tag of a project (Custom Vision's tags); `name` is unique within the project."""

    project_id: str
    name: str
    description: str = ""
    create_date: datetime = Field(default_factory=utc_now)


class RegionDoc(Document):
    """A tagged box on a source, normalized to the image: 0 <= left < left + width <= 1, same vertically.

    Custom Vision's region shape (left, top, width, height), so its training projects reuse it unchanged.
    """

    project_id: str
    source_id: str
    tag_id: str
    left: float
    top: float
    width: float
    height: float
    create_date: datetime = Field(default_factory=utc_now)


class BatchJobStatus(str, Enum):
    QUEUED = "Queued"
    RUNNING = "Running"
    FINISHED = "Finished"  # every source ended, at least one with a prediction
    ERRORED = "Errored"  # every source failed


class BatchJobDoc(Document):
    """`id` is the id of the job's own task (kind batch), so webhooks and `/v0.7/tasks/{id}/` see its end.

    Sources are dispatched in chunks (consumers.batch); `next_chunk` is the first chunk not yet published.
    """

    project_id: str
    project_name: str
    layer_id: str
    layer_name: str
    model: ModelRef
    source_ids: list[str]
    status: BatchJobStatus = BatchJobStatus.QUEUED
    done: int = 0
    failed: int = 0
    next_chunk: int = 0
    create_date: datetime = Field(default_factory=utc_now)
    update_date: datetime = Field(default_factory=utc_now)


BATCH_OWNER = "batches"  # batch links are looked up by task id before the tenant is known


class BatchLinkDoc(Document):
    """A source's task in a batch job; `id` is the task's id. `owner` is always BATCH_OWNER.

    Written before the task's job is published, so the result writer finds a batch's links in one read.
    """

    tenant: str
    job_id: str
    source_id: str


class BatchChunkDoc(Document):
    """A chunk of a batch job all of whose sources' tasks have ended; `id` is `<job_id>.chunk<n>`.

    Written once (its content follows from the stored tasks, so whichever process writes it first writes the
    same): a job's progress sums these and reads the tasks of its unfinished chunks only, instead of counting
    every source of the job after every batch of outcomes.
    """

    job_id: str
    chunk: int
    done: int
    failed: int


class PredictionDoc(Document):
    """A source's prediction in a layer, `id` `<layer_id>:<source_id>`: the newest job's wins (by job id)."""

    project_id: str
    layer_id: str
    source_id: str
    job_id: str
    ok: bool
    data: dict[str, Any] | None = None
    error: str | None = None
    date: datetime = Field(default_factory=utc_now)


class OutboxDoc(Document):
    """A job recorded before it is published; `id` is its message id. Deleted once the broker confirms it.

    `body` is the message; a large one is the file `file_key` instead (a MongoDB document holds 16 MB).
    """

    queue: str
    task_id: str  # the task that ends when the job is done (a batch chunk's: the batch job's)
    task_owner: str
    body: str | None = None
    file_key: str | None = None
    date: datetime = Field(default_factory=utc_now)
