"""A SavedModel's serving signature as found at deployment, and how user-given tensor names resolve to it.

Stored on the network so the gateway can check tensor names without loading TensorFlow.
"""

from __future__ import annotations

from pydantic import BaseModel


class TensorSpec(BaseModel):
    shape: list[int | None]  # first dimension is the batch
    dtype: str  # numpy dtype name, e.g. "float32"
    graph_name: str  # e.g. "serving_default_image:0" or "StatefulPartitionedCall:1"


def _bare(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


def _resolve(tensors: dict[str, TensorSpec], name: str) -> str | None:
    if name in tensors:
        return name
    wanted = _bare(name)
    matches = [key for key, spec in tensors.items() if _bare(spec.graph_name) == wanted]
    return matches[0] if len(matches) == 1 else None


class Signature(BaseModel):
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    def resolve_input(self, name: str) -> str | None:
        """The signature key a user-given input name means: a key, or an unambiguous graph tensor name."""
        return _resolve(self.inputs, name)

    def resolve_output(self, name: str) -> str | None:
        return _resolve(self.outputs, name)
