"""Checks that a network's configuration fits its SavedModel signature, and a version's fits both.

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
from schemas.specs import RoiKind, SpecOutput
from schemas.versions import PostProcessing

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


def check_post_processings(
    signature: Signature, outputs: list[SpecOutput], post_processings: list[PostProcessing]
) -> list[str]:
    """Human-readable reasons why a version's post-processings do not fit; empty when they do."""
    if len(post_processings) != len(outputs):
        return [
            f"the spec has {len(outputs)} output(s), so the version needs exactly that many "
            f"post_processings, not {len(post_processings)}"
        ]
    problems: list[str] = []
    for index, (output, post) in enumerate(zip(outputs, post_processings, strict=True)):
        found = _output_problems(signature, output, post)
        problems += [f"post_processings[{index}]: {text}" for text in found]
    return problems


def _output_problems(signature: Signature, output: SpecOutput, post: PostProcessing) -> list[str]:
    labels = len(output.labels.labels)
    problems: list[str] = []
    if len(post.thresholds) != labels:
        problems.append(f"{len(post.thresholds)} thresholds for {labels} labels; give one per label")
    roi = output.labels.roi
    if roi is RoiKind.NONE and post.classification is None:
        problems.append("the spec output has roi NONE, which needs a classification post-processing")
    if roi is RoiKind.BBOX and post.detection is None:
        problems.append("the spec output has roi BBOX, which needs a detection post-processing")
    scores_name, boxes_name = _scores_and_boxes(post)
    for name in post.tensor_names():
        if signature.resolve_output(name) is None:
            problems.append(_missing_output(signature, name))
    scores_dim = _last_dim(signature, scores_name)
    if scores_dim is not None and scores_dim != labels:
        problems.append(f"tensor {scores_name!r} has {scores_dim} scores per row for {labels} labels")
    boxes_dim = _last_dim(signature, boxes_name) if boxes_name else None
    if boxes_dim is not None and boxes_dim != 4:
        problems.append(f"boxes tensor {boxes_name!r} has last dimension {boxes_dim}; it needs 4")
    return problems


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


def _scores_and_boxes(post: PostProcessing) -> tuple[str, str | None]:
    if post.classification is not None:
        return post.classification.output_tensor, None
    assert post.detection is not None
    assert post.detection.direct_output is not None
    return post.detection.direct_output.scores_tensor, post.detection.direct_output.boxes_tensor


def _last_dim(signature: Signature, name: str) -> int | None:
    key = signature.resolve_output(name)
    if key is None or not signature.outputs[key].shape:
        return None
    return signature.outputs[key].shape[-1]


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
