"""MTCNN's face cascade (P-Net, R-Net, O-Net) as one TensorFlow graph, using the `mtcnn` package's weights.

The `mtcnn` package runs the cascade eagerly with NumPy between stages; a SavedModel needs every step as a
graph op on fixed-size tensors. Each stage keeps the package's arithmetic (its pyramid, window boxes, box
regression, square crops, crop convention and thresholds). Its NumPy NMS becomes TensorFlow's greedy
`combined_non_max_suppression` (IoU over union at every stage, where the package's last stage divides by the
smaller box), which also pads each stage's output to a fixed number of candidates, padding rows scoring 0.
Boxes are (y1, x1, y2, x2) in pixels of the network input until the end: the order `crop_and_resize` and
NMS expect."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import tensorflow as tf
from mtcnn.stages import StageONet, StagePNet, StageRNet

# The package's defaults (mtcnn.MTCNN.detect_faces).
MIN_FACE = 20
_MIN_CELL = 12  # P-Net's receptive field
_PYRAMID_FACTOR = 0.709
_PNET_SCORE, _PNET_NMS_SCALE, _PNET_NMS_ALL = 0.6, 0.5, 0.7
_RNET_SCORE, _RNET_NMS = 0.7, 0.7
_ONET_NMS = 0.7
# Candidates kept after each stage: bounds the fixed-size tensors (a crowd photo needs more).
_PER_SCALE, _AFTER_PNET, _AFTER_RNET = 300, 300, 100


def pyramid(height: int, width: int) -> list[float]:
    """Scales at which P-Net's 12-pixel window sees faces from MIN_FACE pixels to the whole image."""
    count = round(-(math.log(min(height, width) / _MIN_CELL) / math.log(_PYRAMID_FACTOR) + 1))
    return [_MIN_CELL / MIN_FACE * _PYRAMID_FACTOR**level for level in range(count)]


def _nms(boxes: Any, scores: Any, keep: int, iou: float, floor: float) -> tuple[Any, Any]:
    """Per-image NMS padded to `keep` rows; `floor` drops scores below it (and the padding, score 0)."""
    kept = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :],
        scores[:, :, None],
        max_output_size_per_class=keep,
        max_total_size=keep,
        iou_threshold=iou,
        score_threshold=floor,
        clip_boxes=False,
    )
    return kept.nmsed_boxes, kept.nmsed_scores


def _square(boxes: Any) -> Any:
    """Grow the shorter side around the centre: R-Net and O-Net take square crops."""
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    side = tf.maximum(y2 - y1, x2 - x1)
    top = y1 + (y2 - y1 - side) / 2
    left = x1 + (x2 - x1 - side) / 2
    return tf.stack([top, left, top + side, left + side], axis=-1)


def _regress(boxes: Any, offsets: Any) -> Any:
    """Apply R-Net/O-Net regression: offsets are (dx1, dy1, dx2, dy2) in units of the box size + 1 pixel."""
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    dx1, dy1, dx2, dy2 = tf.unstack(offsets, axis=-1)
    width, height = x2 - x1 + 1, y2 - y1 + 1
    return tf.stack([y1 + dy1 * height, x1 + dx1 * width, y2 + dy2 * height, x2 + dx2 * width], axis=-1)


@dataclass(frozen=True)
class _Refiner:
    """R-Net or O-Net: re-scores and regresses the candidates of the stage before on crops of them."""

    network: Any
    crop: int  # side of the square crops the network takes
    floor: float  # candidates scoring below are dropped
    iou: float  # NMS threshold among the survivors
    keep: int  # candidates passed on (rows of the fixed-size output)
    square: bool  # whether the next stage wants square boxes


class Cascade:
    """Builds the graph function; `module` is what tf.saved_model.save writes, `serve` its signature."""

    def __init__(self, height: int, width: int, max_faces: int, min_score: float) -> None:
        self._height, self._width = height, width
        self._scales = pyramid(height, width)
        self.module = tf.Module()
        # The package's stages load the trained weights it ships (mtcnn/assets/weights/*.lz4) into Keras
        # networks; those become attributes of the module, so their variables are tracked and saved.
        self.module.pnet = self._pnet = StagePNet().model
        self.module.rnet = rnet = StageRNet().model
        self.module.onet = onet = StageONet().model
        self._refiners = (
            _Refiner(rnet, 24, _RNET_SCORE, _RNET_NMS, _AFTER_RNET, square=True),
            _Refiner(onet, 48, min_score, _ONET_NMS, max_faces, square=False),
        )
        self.module.serve = self.serve = tf.function(
            self._detect,
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="image")],
        )

    def _detect(self, image: Any) -> dict[str, Any]:
        """Pixels in [0, 255] to boxes [B, N, 4] (normalized xmin, ymin, xmax, ymax) and scores [B, N, 1]."""
        normalized = (image - 127.5) / 128.0  # the package's normalize_images
        boxes, scores = self._proposals(normalized)
        for refiner in self._refiners:
            boxes, scores = self._refined(refiner, normalized, boxes, scores)
        y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
        across, down = float(self._width), float(self._height)
        corners = tf.stack([x1 / across, y1 / down, x2 / across, y2 / down], axis=-1)
        return {"boxes": tf.clip_by_value(corners, 0.0, 1.0), "scores": scores[:, :, None]}

    def _proposals(self, normalized: Any) -> tuple[Any, Any]:
        """P-Net over the image pyramid: every 12x12 window (stride 2) scored and regressed, then NMS."""
        boxes, scores = [], []
        for scale in self._scales:
            size = (int(self._height * scale), int(self._width * scale))  # the package truncates too
            offsets, probabilities = self._pnet(tf.image.resize(normalized, size, method="area"))
            rows, cols = offsets.shape[1], offsets.shape[2]
            ys, xs = tf.meshgrid(
                tf.range(rows, dtype=tf.float32), tf.range(cols, dtype=tf.float32), indexing="ij"
            )
            windows = tf.stack([ys * 2, xs * 2, ys * 2 + _MIN_CELL, xs * 2 + _MIN_CELL], axis=-1)
            dx1, dy1, dx2, dy2 = tf.unstack(offsets, axis=-1)
            shifts = tf.stack([dy1, dx1, dy2, dx2], axis=-1) * _MIN_CELL
            batch = tf.shape(offsets)[0]
            found = tf.reshape((windows[None] + shifts) / scale, [batch, rows * cols, 4])
            face = tf.reshape(probabilities[..., 1], [batch, rows * cols])
            kept_boxes, kept_scores = _nms(found, face, _PER_SCALE, _PNET_NMS_SCALE, _PNET_SCORE)
            boxes.append(kept_boxes)
            scores.append(kept_scores)
        kept_boxes, kept_scores = _nms(
            tf.concat(boxes, 1), tf.concat(scores, 1), _AFTER_PNET, _PNET_NMS_ALL, _PNET_SCORE
        )
        return _square(kept_boxes), kept_scores

    def _refined(self, refiner: _Refiner, normalized: Any, boxes: Any, scores: Any) -> tuple[Any, Any]:
        """Re-score and regress each candidate on its crop; padding rows (score 0) stay out."""
        batch, count = tf.shape(boxes)[0], tf.shape(boxes)[1]
        size = tf.constant([self._height, self._width, self._height, self._width], tf.float32)
        crops = tf.image.crop_and_resize(
            normalized,
            tf.reshape(boxes / size, [-1, 4]),  # the package divides by the size, not size - 1
            tf.repeat(tf.range(batch), count),
            (refiner.crop, refiner.crop),
        )
        outputs = refiner.network(crops)  # offsets first, face probabilities last
        offsets = tf.reshape(outputs[0], [batch, count, 4])
        rescored = tf.where(scores > 0, tf.reshape(outputs[-1][:, 1], [batch, count]), 0.0)
        kept_boxes, kept_scores = _nms(
            _regress(boxes, offsets), rescored, refiner.keep, refiner.iou, refiner.floor
        )
        return (_square(kept_boxes) if refiner.square else kept_boxes), kept_scores
