"""What a consumer and its engine process (consumers.engine_child) say to each other over their pipe.

Kept apart from the child's module, which imports TensorFlow: the consumer itself never does.
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers.compute import BatchRun, RunItem
from consumers.engine_buffer import SharedArray


@dataclass(frozen=True)
class LoadNetwork:
    network_id: str
    folder: str  # absolute: the child's working directory is the fork server's


@dataclass(frozen=True)
class InputGroup:
    """Inputs of one shape, stacked in the batch buffer (consumers.engine_buffer), and their items."""

    indices: list[int]
    array: SharedArray


@dataclass(frozen=True)
class RunBatch:
    network_id: str
    folder: str
    model_refs: list[bytes]  # the distinct ModelRefs of the batch's jobs, as JSON (RunItem.ref indexes them)
    items: list[RunItem]
    inputs: list[InputGroup]


@dataclass(frozen=True)
class AttachBuffer:
    """The batch buffer's descriptor follows on the pipe's socket: map it in place of any earlier one."""


@dataclass(frozen=True)
class DropNetwork:
    network_id: str


@dataclass(frozen=True)
class Ready:
    """The request is done; `load_s` is what loading the network took (0 when it was loaded already)."""

    load_s: float


@dataclass(frozen=True)
class Failed:
    """The network could not be loaded (or the request could not be served); a sentence for the user."""

    error: str


Request = LoadNetwork | RunBatch | DropNetwork | AttachBuffer
Reply = Ready | tuple[BatchRun, float] | Failed
