"""`anchored_output`: offsets from anchors, decoded as the TF Object Detection API's FasterRcnnBoxCoder does.

Anchors are (ymin, xmin, ymax, xmax) and offsets (ty, tx, th, tw), the TF OD API's orders; with scale factors
(sy, sx, sh, sw) and an anchor of centre (ya, xa) and size (ha, wa):
    y = ty / sy * ha + ya     h = exp(th / sh) * ha
    x = tx / sx * wa + xa     w = exp(tw / sw) * wa
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.decoders.numeric import capped_exp, sigmoid, softmax
from engine.errors import ModelError
from schemas.versions import AnchoredOutput, ScoreActivation


def decode_anchored(anchors: np.ndarray, offsets: np.ndarray, scale_factors: Sequence[float]) -> np.ndarray:
    """Boxes `[N, 4]` as (xmin, ymin, xmax, ymax), in the anchors' unit, from `[N, 4]` anchors and offsets."""
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 4)
    offsets = np.asarray(offsets, dtype=np.float64).reshape(-1, 4)
    anchor_ymin, anchor_xmin, anchor_ymax, anchor_xmax = anchors.T
    anchor_height, anchor_width = anchor_ymax - anchor_ymin, anchor_xmax - anchor_xmin
    ty, tx, th, tw = (offsets / np.asarray(scale_factors, dtype=np.float64)).T
    y_centre = ty * anchor_height + anchor_ymin + anchor_height / 2
    x_centre = tx * anchor_width + anchor_xmin + anchor_width / 2
    half_height, half_width = capped_exp(th) * anchor_height / 2, capped_exp(tw) * anchor_width / 2
    return np.stack(
        [x_centre - half_width, y_centre - half_height, x_centre + half_width, y_centre + half_height], axis=1
    )


def anchored_detections(
    anchors: np.ndarray, offsets: np.ndarray, scores: np.ndarray, config: AnchoredOutput, labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes `[N, 4]` (xmin, ymin, xmax, ymax) and scores `[N, labels]`; `ModelError` when shapes disagree."""
    if anchors.ndim == 0 or anchors.shape[-1] != 4:
        raise ModelError(
            f"anchors tensor {config.anchors_tensor!r} has shape {list(anchors.shape)}; "
            "it needs [N, 4] (ymin, xmin, ymax, xmax)"
        )
    rows = anchors.size // 4
    if offsets.ndim == 0 or offsets.shape[-1] != 4 or offsets.size != rows * 4:
        raise ModelError(
            f"offsets tensor {config.offsets_tensor!r} has shape {list(offsets.shape)}; with {rows} anchors "
            f"it needs [{rows}, 4] (ty, tx, th, tw)"
        )
    columns = labels + config.background_class
    if scores.ndim == 0 or scores.shape[-1] != columns or scores.size != rows * columns:
        raise ModelError(
            f"scores tensor {config.scores_tensor!r} has shape {list(scores.shape)}; with {rows} anchors and "
            f"{labels} labels it needs [{rows}, {columns}]{_background_hint(scores, config, labels)}"
        )
    activated = _activate(scores.astype(np.float64).reshape(rows, columns), config.score_activation)
    # Activation first: a softmax spreads probability over the background column too.
    return decode_anchored(anchors, offsets, config.scale_factors), activated[:, columns - labels :]


def _activate(scores: np.ndarray, activation: ScoreActivation) -> np.ndarray:
    if activation is ScoreActivation.SIGMOID:
        return sigmoid(scores)
    if activation is ScoreActivation.SOFTMAX:
        return softmax(scores)
    return scores


def _background_hint(scores: np.ndarray, config: AnchoredOutput, labels: int) -> str:
    if config.background_class:
        return " (column 0 is the background: background_class is true)"
    if scores.ndim and scores.shape[-1] == labels + 1:
        return "; if its column 0 is the background class, set background_class to true"
    return ""
