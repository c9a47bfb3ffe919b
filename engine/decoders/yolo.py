"""`yolo_output`: one raw YOLO grid, decoded as Darknet's region (v2) and yolo (v3) layers do.

For the cell at row i, column j of an H x W grid and anchor (aw, ah), with s the sigmoid:
    x = (s(tx) + j) / W       w = exp(tw) * aw / input width     (anchors in pixels)
    y = (s(ty) + i) / H       h = exp(th) * ah / input height    (in cells: / W and / H)
    score of class c = s(objectness) * p(c), p a softmax over the classes (v2) or a sigmoid per class (v3).
"""

from __future__ import annotations

import numpy as np

from engine.decoders.numeric import capped_exp, sigmoid, softmax
from engine.errors import ModelError
from schemas.versions import AnchorUnits, YoloOutput, YoloVersion


def decode_yolo(
    grid: np.ndarray,
    anchors: np.ndarray,
    *,
    version: YoloVersion,
    anchor_extent: tuple[float, float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes `[H * W * A, 4]` as normalized (xmin, ymin, xmax, ymax) and scores `[H * W * A, K]`.

    `grid` is `[H, W, A, 5 + K]` of raw values (tx, ty, tw, th, objectness, K class scores); `anchors` is
    `[A, 2]` (width, height); `anchor_extent` is the network input's (width, height) in the anchors' unit,
    None when the anchors are in grid cells. Rows run over grid rows, then columns, then anchors.
    """
    grid = np.asarray(grid, dtype=np.float64)
    rows, columns, count = grid.shape[:3]
    anchors = np.asarray(anchors, dtype=np.float64).reshape(count, 2)
    extent_width, extent_height = anchor_extent or (columns, rows)
    x = (sigmoid(grid[..., 0]) + np.arange(columns)[None, :, None]) / columns
    y = (sigmoid(grid[..., 1]) + np.arange(rows)[:, None, None]) / rows
    # Darknet leaves exp() uncapped; the cap only turns an overflow into a box larger than any image.
    half_width = capped_exp(grid[..., 2]) * anchors[:, 0] / extent_width / 2
    half_height = capped_exp(grid[..., 3]) * anchors[:, 1] / extent_height / 2
    boxes = np.stack([x - half_width, y - half_height, x + half_width, y + half_height], axis=-1)
    logits = grid[..., 5:]
    classes = softmax(logits) if version is YoloVersion.V2 else sigmoid(logits)
    scores = sigmoid(grid[..., 4:5]) * classes
    return boxes.reshape(-1, 4), scores.reshape(-1, logits.shape[-1])


def yolo_detections(grid: np.ndarray, config: YoloOutput, labels: int) -> tuple[np.ndarray, np.ndarray]:
    """`decode_yolo` for the grid `config` names, shaped `[H, W, A * (5 + K)]` or `[H, W, A, 5 + K]`."""
    count, depth = len(config.anchors), 5 + labels
    shape = grid.shape
    if grid.ndim == 3 and shape[-1] == count * depth:
        grid = grid.reshape(shape[0], shape[1], count, depth)
    elif not (grid.ndim == 4 and shape[-2:] == (count, depth)):
        raise ModelError(
            f"YOLO tensor {config.output_tensor!r} has shape {list(shape)}; with {count} anchors and "
            f"{labels} labels it needs [H, W, {count * depth}] or [H, W, {count}, {depth}] "
            f"(per anchor: tx, ty, tw, th, objectness, {labels} class scores)"
        )
    return decode_yolo(
        grid, np.asarray(config.anchors), version=config.version, anchor_extent=_anchor_extent(grid, config)
    )


def _anchor_extent(grid: np.ndarray, config: YoloOutput) -> tuple[float, float] | None:
    if config.anchor_units is AnchorUnits.CELLS:
        return None
    if config.input_size is not None:
        width, height = config.input_size
        return float(width), float(height)
    assert config.stride is not None  # the schema asks for one of them with pixel anchors
    return float(grid.shape[1] * config.stride), float(grid.shape[0] * config.stride)
