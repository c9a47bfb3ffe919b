"""Consistency of a recognition version: its post-processings against the spec and the network signature.

Pure and TensorFlow-free, so the gateway checks versions at creation from the signature stored at deployment.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.signature import Signature
from schemas.specs import RoiKind, SpecOutput
from schemas.versions import PostProcessing


def _check_tensor(
    signature: Signature | None, name: str, field: str, *, last_dim: int | None
) -> list[tuple[str, str]]:
    if signature is None:
        return []  # not deployed yet: names are checked when the first job runs
    key = signature.resolve_output(name)
    if key is None:
        known = ", ".join(sorted(signature.outputs)) or "none"
        return [(field, f"the network has no output tensor {name!r} (outputs: {known})")]
    shape = signature.outputs[key].shape
    if last_dim is not None and shape and shape[-1] is not None and shape[-1] != last_dim:
        return [(field, f"tensor {name!r} has last dimension {shape[-1]}, expected {last_dim}")]
    return []


def check_post_processings(
    signature: Signature | None, outputs: Sequence[SpecOutput], post_processings: Sequence[PostProcessing]
) -> list[tuple[str, str]]:
    """Problems as (field, reason); empty when the version is consistent."""
    if len(post_processings) != len(outputs):
        return [
            (
                "post_processings",
                f"the spec has {len(outputs)} output(s): give exactly one post-processing per output",
            )
        ]
    problems: list[tuple[str, str]] = []
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
            problems += _check_tensor(
                signature,
                post.classification.output_tensor,
                f"{field}.classification.output_tensor",
                last_dim=labels,
            )
        elif post.detection is not None and post.detection.direct_output is not None:
            if output.labels.roi is not RoiKind.BBOX:
                problems.append((field, "the spec output has roi NONE: use a classification post-processing"))
            direct = post.detection.direct_output
            problems += _check_tensor(
                signature, direct.boxes_tensor, f"{field}.detection.direct_output.boxes_tensor", last_dim=4
            )
            problems += _check_tensor(
                signature,
                direct.scores_tensor,
                f"{field}.detection.direct_output.scores_tensor",
                last_dim=labels,
            )
    return problems
