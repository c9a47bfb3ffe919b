"""Queue messages. JSON on the wire, never pickle; each carries a schema version."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import BBox, InlineBytes, Point
from schemas.networks import Preprocessing
from schemas.specs import SpecOutput
from schemas.versions import PostProcessing


class JobImage(BaseModel):
    """One image: bytes inside the message, or a URL the consumer fetches."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    data: InlineBytes | None = None
    bbox: BBox | None = None
    polygon: list[Point] | None = None
    crop_uniform_background: bool = False


class ModelRef(BaseModel):
    """What a consumer needs to run a job, resolved by the gateway so consumers need no lookups."""

    model_config = ConfigDict(extra="forbid")

    network_id: str
    network_files: list[str]
    preprocessing: Preprocessing
    version_id: str | None = None
    outputs: list[SpecOutput] = Field(default_factory=list)
    post_processings: list[PostProcessing] = Field(default_factory=list)

    def batch_key(self) -> str:
        """Jobs with the same key can share one forward pass."""
        return f"version:{self.version_id}" if self.version_id else f"network:{self.network_id}"


class InputOf(BaseModel):
    """The job is input `index` of a task with `count` inputs; its own task is that input's subtask."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    index: int = Field(ge=0)
    count: int = Field(ge=2)


class InferenceJobFields(BaseModel):
    """An inference job but its model: what a reader validates when it already holds the model (job_wire)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    kind: Literal["inference"] = "inference"
    task_id: str
    owner: str
    image: JobImage
    show_discarded: bool = False
    max_predictions: int = 100
    output_layers: list[str] | None = None
    # Set for one input of a multi-input request: the parent task finishes once all its inputs have results.
    input_of: InputOf | None = None
    # A queue producer's RPC: the consumer that stores the result publishes it to `reply_to` as well.
    reply_to: str | None = None
    correlation_id: str | None = None


class InferenceJob(InferenceJobFields):
    model: ModelRef
    # Written by schemas.job_wire from the model's JSON, so that a reader knows a model it has read before;
    # never trusted without comparing the model's bytes.
    model_digest: str | None = None


class DeploymentJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    kind: Literal["deployment"] = "deployment"
    task_id: str
    owner: str
    network_id: str


Job = Annotated[InferenceJob | DeploymentJob, Field(discriminator="kind")]


class TaskEvent(BaseModel):
    """Published after tasks reached a terminal state and were stored; wakes long polls on every gateway."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    kind: Literal["tasks_finished"] = "tasks_finished"
    task_ids: list[str]
