"""Checks that a network's configuration fits its SavedModel signature (versions: schemas.checks).

Works on the stored `Signature` only, so the gateway can run it without TensorFlow.
"""

from __future__ import annotations

from engine.errors import ModelError
from schemas.networks import (
    ColorChannels,
    DimensionOrder,
    ImagePreprocessing,
    NetworkPostprocessing,
    Preprocessing,
    ResizeType,
)
from schemas.signature import Signature, TensorSpec

# Positions of (height, width, channels) in a rank-4 input, batch first.
_AXES = {
    DimensionOrder.NHWC: (1, 2, 3),
    DimensionOrder.NWHC: (2, 1, 3),
    DimensionOrder.NCHW: (2, 3, 1),
    DimensionOrder.NCWH: (3, 2, 1),
}


def validate_network(
    signature: Signature, preprocessing: Preprocessing, postprocessings: list[NetworkPostprocessing]
) -> None:
    """Raise `ModelError` naming the first part of the network's configuration its signature cannot honour."""
    fed: set[str] = set()
    for item in preprocessing.inputs:
        key = signature.resolve_input(item.tensor_name)
        if key is None:
            raise ModelError(
                f"input tensor {item.tensor_name!r} is not in the model's serving signature; "
                f"its inputs are: {_listing(signature.inputs)}"
            )
        fed.add(key)
        _check_input(key, signature.inputs[key], item.image)
    unfed = sorted(set(signature.inputs) - fed)
    if unfed:
        raise ModelError(
            f"the model's serving signature also needs inputs {unfed}, which the pre-processing does not feed"
        )
    for post in postprocessings:
        for name in _network_output_names(post):
            if signature.resolve_output(name) is None:
                raise ModelError(_missing_output(signature, name))


def _check_input(key: str, spec: TensorSpec, image: ImagePreprocessing) -> None:
    order = image.dimension_order
    where = f"input {key!r} (shape {spec.shape}, {order.value})"
    if len(spec.shape) != 4:
        raise ModelError(f"{where}: an image input needs exactly 4 dimensions")
    height_axis, width_axis, channel_axis = _AXES[order]
    channels = spec.shape[channel_axis]
    wanted = 1 if image.color_channels is ColorChannels.L else 3
    if channels is not None and channels != wanted:
        raise ModelError(
            f"{where}: has {channels} channel(s), but colour {image.color_channels.value} gives {wanted}"
        )
    height, width = spec.shape[height_axis], spec.shape[width_axis]
    if image.resize_type is ResizeType.NETWORK:
        if height is not None or width is not None:
            raise ModelError(
                f"{where}: resize_type NETWORK feeds images of varying size, but the input's height or "
                "width is fixed; use SQUASH, CROP or FILL with that size instead"
            )
        return
    target_width, target_height = image.size()
    target_height = target_height or target_width
    if (height is not None and height != target_height) or (width is not None and width != target_width):
        raise ModelError(
            f"{where}: takes width {width} and height {height}, but target_size {image.target_size} "
            f"makes {target_width}x{target_height} (WxH) images"
        )


def _network_output_names(post: NetworkPostprocessing) -> list[str]:
    if post.standard_output is not None:
        return [post.standard_output.boxes_tensor, post.standard_output.scores_tensor]
    assert post.tensors_output is not None
    return post.tensors_output.tensors


def _missing_output(signature: Signature, name: str) -> str:
    return (
        f"output tensor {name!r} is not in the model's serving signature; "
        f"its outputs are: {_listing(signature.outputs)}"
    )


def _listing(tensors: dict[str, TensorSpec]) -> str:
    if not tensors:
        return "(none)"
    described = (f"{key} ({spec.graph_name}, shape {spec.shape})" for key, spec in sorted(tensors.items()))
    return ", ".join(described)
