"""Intersection over union and greedy non-maximum suppression, vectorised with numpy.

Boxes are rows of (xmin, ymin, xmax, ymax), in any unit as long as both axes share it.
"""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`[N, M]` IoU of each box of `a` (`[N, 4]`) with each box of `b` (`[M, 4]`); 0 where both are empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    intersection = np.clip(width, 0.0, None) * np.clip(height, 0.0, None)
    union = _area(a)[:, None] + _area(b)[None, :] - intersection
    safe_union = np.where(union > 0.0, union, 1.0)
    # min() guards against rounding nudging identical boxes above 1.
    return np.where(union > 0.0, np.minimum(intersection / safe_union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the boxes kept, by decreasing score (ties: lower index first).

    A box is dropped when its IoU with an already kept box exceeds `threshold`.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    kept: list[int] = []
    # One row of IoUs per kept box: memory stays linear in the number of boxes.
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(int(best))
        overlaps = iou_matrix(boxes[best : best + 1], boxes[rest])[0]
        order = rest[overlaps <= threshold]
    return np.asarray(kept, dtype=np.intp)


def _area(boxes: np.ndarray) -> np.ndarray:
    width = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None)
    height = np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)
    area: np.ndarray = width * height
    return area
