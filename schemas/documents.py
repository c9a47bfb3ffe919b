"""Documents as the store keeps them. Every document has an `id` and the `owner` (tenant) it belongs to."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import utc_now
from schemas.networks import Framework, NetworkPostprocessing, NetworkStatus, Preprocessing
from schemas.signature import Signature
from schemas.specs import SpecOutput
from schemas.versions import PostProcessing

PUBLIC_OWNER = "public"
KEYS_OWNER = "keys"  # API keys are looked up before the tenant is known


class Document(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    owner: str


class ApiKeyDoc(Document):
    """`id` is the SHA-256 of the key: keys are never stored in clear. `owner` is always KEYS_OWNER."""

    tenant: str
    name: str = ""
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


class TaskDoc(Document):
    kind: TaskKind
    status: TaskStatus = TaskStatus.PENDING
    error: str | None = None
    data: dict[str, Any] | None = None
    date_created: datetime = Field(default_factory=utc_now)
    date_updated: datetime = Field(default_factory=utc_now)


class TaskOutcome(BaseModel):
    """A terminal state for one task, as a consumer writes it."""

    task_id: str
    status: TaskStatus
    data: dict[str, Any] | None = None
    error: str | None = None
