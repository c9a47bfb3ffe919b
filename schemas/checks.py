"""Consistency of a recognition version: its post-processings against the spec and the network signature.

Pure and TensorFlow-free, so the gateway checks versions at creation from the signature stored at deployment.
Signature shapes start with the batch dimension; unknown dimensions (None) pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.signature import Signature
from schemas.specs import RoiKind, SpecOutput
from schemas.versions import AnchoredOutput, DetectionPostProcessing, PostProcessing, YoloOutput

Problems = list[tuple[str, str]]
Shape = list[int | None]


def check_post_processings(
    signature: Signature | None, outputs: Sequence[SpecOutput], post_processings: Sequence[PostProcessing]
) -> Problems:
    """Problems as (field, reason); empty when the version is consistent."""
    if len(post_processings) != len(outputs):
        return [
            (
                "post_processings",
                f"the spec has {len(outputs)} output(s): give exactly one post-processing per output",
            )
        ]
    problems: Problems = []
    for index, (output, post) in enumerate(zip(outputs, post_processings, strict=True)):
        field = f"post_processings[{index}]"
        labels = len(output.labels.labels)
        if len(post.thresholds) != labels:
            kind = "classification" if post.classification else "detection"
            problems.append(
                (
                    f"{field}.{kind}.thresholds",
                    f"has {len(post.thresholds)} value(s) but the spec output has {labels} label(s)",
                )
            )
        if post.classification is not None:
            if output.labels.roi is RoiKind.BBOX:
                problems.append((field, "the spec output has roi BBOX: use a detection post-processing"))
            if signature is not None:
                problems += _check_tensor(
                    signature,
                    post.classification.output_tensor,
                    f"{field}.classification.output_tensor",
                    last_dim=labels,
                )
        elif post.detection is not None:
            if output.labels.roi is not RoiKind.BBOX:
                problems.append((field, "the spec output has roi NONE: use a classification post-processing"))
            if signature is not None:  # not deployed yet: names are checked when the first job runs
                problems += _check_detection(signature, post.detection, labels, f"{field}.detection")
    return problems


def _check_detection(
    signature: Signature, detection: DetectionPostProcessing, labels: int, field: str
) -> Problems:
    if detection.anchored_output is not None:
        return _check_anchored(signature, detection.anchored_output, labels, f"{field}.anchored_output")
    if detection.yolo_output is not None:
        return _check_yolo(signature, detection.yolo_output, labels, f"{field}.yolo_output")
    assert detection.direct_output is not None
    direct, field = detection.direct_output, f"{field}.direct_output"
    boxes = _check_tensor(signature, direct.boxes_tensor, f"{field}.boxes_tensor", last_dim=4)
    return boxes + _check_tensor(signature, direct.scores_tensor, f"{field}.scores_tensor", last_dim=labels)


def _check_anchored(signature: Signature, anchored: AnchoredOutput, labels: int, field: str) -> Problems:
    columns = labels + anchored.background_class
    if anchored.background_class:
        meaning = f"{labels} label(s) after the background column, as background_class is true"
    else:
        meaning = "one per label; if column 0 is the background, set background_class to true"
    tensors = [
        (anchored.anchors_tensor, "anchors_tensor", 4, "(ymin, xmin, ymax, xmax)"),
        (anchored.offsets_tensor, "offsets_tensor", 4, "(ty, tx, th, tw)"),
        (anchored.scores_tensor, "scores_tensor", columns, meaning),
    ]
    problems: Problems = []
    rows: dict[str, int] = {}
    for name, key, last_dim, why in tensors:
        found = _check_tensor(signature, name, f"{field}.{key}", last_dim=last_dim, why=why)
        problems += found
        shape = _shape(signature, name)
        if not found and shape is not None and len(shape) >= 2 and shape[-2] is not None:
            rows[key] = shape[-2]
    if len(set(rows.values())) > 1:
        counts = ", ".join(f"{key} {count}" for key, count in rows.items())
        problems.append(
            (field, f"the tensors disagree on the number of anchors: {counts}; they need one each")
        )
    return problems


def _check_yolo(signature: Signature, yolo: YoloOutput, labels: int, field: str) -> Problems:
    field = f"{field}.output_tensor"
    shape = _shape(signature, yolo.output_tensor)
    if shape is None:
        return [(field, _missing(signature, yolo.output_tensor))]
    count, depth = len(yolo.anchors), 5 + labels
    layouts = f"[batch, H, W, {count * depth}] or [batch, H, W, {count}, {depth}]"
    why = f"{count} anchor(s) x (tx, ty, tw, th, objectness and {labels} class score(s))"
    if len(shape) == 4 and shape[-1] in (None, count * depth):
        return []
    if len(shape) == 5 and shape[-2] in (None, count) and shape[-1] in (None, depth):
        return []
    return [(field, f"tensor {yolo.output_tensor!r} has shape {shape}; it needs {layouts}: {why}")]


def _check_tensor(signature: Signature, name: str, field: str, *, last_dim: int, why: str = "") -> Problems:
    shape = _shape(signature, name)
    if shape is None:
        return [(field, _missing(signature, name))]
    if shape and shape[-1] is not None and shape[-1] != last_dim:
        because = f" ({why})" if why else ""
        return [(field, f"tensor {name!r} has last dimension {shape[-1]}, expected {last_dim}{because}")]
    return []


def _shape(signature: Signature, name: str) -> Shape | None:
    key = signature.resolve_output(name)
    return None if key is None else signature.outputs[key].shape


def _missing(signature: Signature, name: str) -> str:
    known = ", ".join(sorted(signature.outputs)) or "none"
    return f"the network has no output tensor {name!r} (outputs: {known})"
