"""Raw output tensors of one example to labelled predictions (Deepomatic's inference output)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.decoders.anchored import anchored_detections
from engine.decoders.yolo import yolo_detections
from engine.errors import ModelError
from engine.nms import fast_nms
from engine.preprocess import ImageMeta, map_boxes_to_original
from schemas.inference import (
    InferenceResult,
    Tensor,
    TensorsResult,
)
from schemas.specs import Label, SpecOutput
from schemas.versions import ClassificationPostProcessing, DetectionPostProcessing, PostProcessing


@dataclass(frozen=True)
class _Candidate:
    score: float
    label: int  # index in the spec output's labels
    box: tuple[float, float, float, float] | None = None


def recognize(
    tensors: Mapping[str, np.ndarray],
    meta: ImageMeta,
    outputs: Sequence[SpecOutput],
    post_processings: Sequence[PostProcessing],
    *,
    show_discarded: bool,
    max_predictions: int,
) -> InferenceResult:
    """Labelled predictions for one example, `outputs[i]` read through `post_processings[i]`.

    `tensors` are the example's outputs (batch dimension removed), keyed as the post-processings name them.
    Region ids count from 1 across the whole result, predicted before discarded.
    """
    if len(outputs) != len(post_processings):
        raise ModelError(f"{len(post_processings)} post-processings for {len(outputs)} spec outputs")
    regions = itertools.count(1)
    # Plain dicts, validated once at the end: one pass in pydantic's core instead of three Python-level
    # constructions per prediction, which cost more than NMS itself on large detections.
    results: list[dict[str, Any]] = []
    for output, post in zip(outputs, post_processings, strict=True):
        labels = output.labels.labels
        if len(post.thresholds) != len(labels):
            raise ModelError(f"{len(post.thresholds)} thresholds for {len(labels)} labels")
        if post.classification is not None:
            candidates = _classify(tensors, post.classification, len(labels))
        else:
            assert post.detection is not None
            candidates = _detect(tensors, post.detection, len(labels), meta, show_discarded)
        thresholds = post.thresholds
        predicted = [c for c in candidates if c.score >= thresholds[c.label]]
        discarded = [c for c in candidates if c.score < thresholds[c.label]] if show_discarded else []
        results.append(
            {
                "labels": {
                    "predicted": _predictions(predicted, labels, thresholds, max_predictions, regions),
                    "discarded": _predictions(discarded, labels, thresholds, max_predictions, regions),
                }
            }
        )
    return InferenceResult.model_validate({"outputs": results})


def raw_tensors(tensors: Mapping[str, np.ndarray], names: Sequence[str]) -> TensorsResult:
    """The named tensors as flat lists of numbers with their shapes (network inference output)."""
    result: list[Tensor] = []
    for name in names:
        array = _tensor(tensors, name)
        if array.dtype.kind in "biu":
            data: list[float] | list[int] = array.astype(np.int64).ravel().tolist()
        elif array.dtype.kind == "f":
            data = array.astype(np.float64).ravel().tolist()
        else:
            raise ModelError(f"tensor {name!r} holds {array.dtype} values, which are not numbers")
        result.append(Tensor(name=name, shape=list(array.shape), data=data))
    return TensorsResult(tensors=result)


def _classify(
    tensors: Mapping[str, np.ndarray], post: ClassificationPostProcessing, count: int
) -> list[_Candidate]:
    scores = _tensor(tensors, post.output_tensor)
    if scores.size != count:
        raise ModelError(
            f"tensor {post.output_tensor!r} has shape {list(scores.shape)}: "
            f"{scores.size} scores for {count} labels"
        )
    flat = scores.astype(np.float64).ravel()
    if not np.isfinite(flat).all():
        raise ModelError(f"tensor {post.output_tensor!r} holds scores that are not finite numbers")
    return [_Candidate(float(score), index) for index, score in enumerate(flat)]


def _detect(
    tensors: Mapping[str, np.ndarray],
    post: DetectionPostProcessing,
    count: int,
    meta: ImageMeta,
    show_discarded: bool,
) -> list[_Candidate]:
    boxes, scores = _decode(tensors, post, count)
    mapped = map_boxes_to_original(boxes, meta)
    # Boxes the model padded with, or that fall wholly outside the image (FILL's padding), are no objects.
    usable = np.isfinite(mapped).all(axis=1) & (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])
    candidates: list[_Candidate] = []
    for label, threshold in enumerate(post.thresholds):
        column = scores[:, label]
        # NMS over every box of the label keeps the same boxes above the threshold (they outrank all those
        # below), and spares `discarded` near-duplicates of them.
        wanted = usable & np.isfinite(column) & (show_discarded | (column >= threshold))
        rows_wanted = np.flatnonzero(wanted)
        for row in rows_wanted[fast_nms(mapped[rows_wanted], column[rows_wanted], post.nms_threshold)]:
            xmin, ymin, xmax, ymax = (float(value) for value in mapped[row])
            candidates.append(_Candidate(float(column[row]), label, (xmin, ymin, xmax, ymax)))
    return candidates


def _decode(
    tensors: Mapping[str, np.ndarray], post: DetectionPostProcessing, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes `[N, 4]` (xmin, ymin, xmax, ymax) normalized on the network input, and scores `[N, count]`."""
    if post.anchored_output is not None:
        anchored = post.anchored_output
        return anchored_detections(
            _tensor(tensors, anchored.anchors_tensor),
            _tensor(tensors, anchored.offsets_tensor),
            _tensor(tensors, anchored.scores_tensor),
            anchored,
            count,
        )
    if post.yolo_output is not None:
        return yolo_detections(_tensor(tensors, post.yolo_output.output_tensor), post.yolo_output, count)
    assert post.direct_output is not None
    boxes_name, scores_name = post.direct_output.boxes_tensor, post.direct_output.scores_tensor
    boxes, scores = _tensor(tensors, boxes_name), _tensor(tensors, scores_name)
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ModelError(f"boxes tensor {boxes_name!r} has shape {list(boxes.shape)}; it needs [N, 4]")
    rows = boxes.size // 4
    if scores.size != rows * count:
        raise ModelError(
            f"scores tensor {scores_name!r} has shape {list(scores.shape)}; with {rows} boxes and {count} "
            f"labels it needs [{rows}, {count}]"
        )
    return boxes.reshape(rows, 4), scores.astype(np.float64).reshape(rows, count)


def _predictions(
    candidates: list[_Candidate],
    labels: list[Label],
    thresholds: list[float],
    limit: int,
    regions: Iterator[int],
) -> list[dict[str, Any]]:
    best = sorted(candidates, key=lambda candidate: -candidate.score)[:limit]
    return [
        {
            "label_id": labels[c.label].id,
            "label_name": labels[c.label].name,
            "score": c.score,
            "threshold": float(thresholds[c.label]),
            "roi": None if c.box is None else {"region_id": next(regions), "bbox": _bbox(c.box)},
        }
        for c in best
    ]


def _bbox(box: tuple[float, float, float, float]) -> dict[str, float]:
    xmin, ymin, xmax, ymax = box
    return {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}


def _tensor(tensors: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in tensors:
        raise ModelError(f"tensor {name!r} is missing from the model's outputs; it has {sorted(tensors)}")
    return np.asarray(tensors[name])
