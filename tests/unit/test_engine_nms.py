"""IoU and NMS: against TensorFlow's NMS, and as properties."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from engine.nms import fast_nms, iou_matrix, nms


def random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    corners = rng.random((count, 2)) * 0.8
    sizes = rng.random((count, 2)) * 0.3 + 0.01
    return np.concatenate([corners, corners + sizes], axis=1)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_keeps_what_tensorflow_keeps(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 60)
    scores = rng.random(60)
    # TensorFlow takes (ymin, xmin, ymax, xmax).
    expected = tf.image.non_max_suppression(
        boxes[:, [1, 0, 3, 2]].astype(np.float32), scores.astype(np.float32), 60, iou_threshold=threshold
    ).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, threshold), expected)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("count", [10, 200, 1000])
def test_fast_nms_keeps_what_the_reference_keeps(seed: int, count: int) -> None:
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, count).astype(np.float32)
    scores = rng.random(count).astype(np.float32)
    for threshold in (0.3, 0.5, 0.7):
        np.testing.assert_array_equal(fast_nms(boxes, scores, threshold), nms(boxes, scores, threshold))


def test_nms_edge_cases() -> None:
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    same = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=float)
    assert nms(same, np.array([0.4, 0.9]), 0.5).tolist() == [1]
    assert nms(same, np.array([0.4, 0.9]), 1.0).tolist() == [1, 0]  # IoU 1 does not exceed 1
    assert nms(same, np.array([0.5, 0.5]), 0.5).tolist() == [0]  # ties: lower index first
    half = np.array([[0, 0, 2, 1], [1, 0, 3, 1]], dtype=float)  # IoU exactly 1/3
    assert nms(half, np.array([0.9, 0.8]), 1 / 3).tolist() == [0, 1]


def test_iou_values() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 0, 0]], dtype=float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 0, 0]], dtype=float)
    np.testing.assert_allclose(iou_matrix(a, b), [[1 / 7, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)


box_arrays = hnp.arrays(
    np.float64,
    st.tuples(st.integers(0, 25), st.just(4)),
    elements=st.floats(0.0, 1.0, allow_nan=False),
).map(
    lambda corners: np.concatenate(
        [np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])], axis=1
    )
)


@settings(max_examples=150, deadline=None)
@given(a=box_arrays, b=box_arrays)
def test_iou_is_symmetric_and_bounded(a: np.ndarray, b: np.ndarray) -> None:
    forward, backward = iou_matrix(a, b), iou_matrix(b, a)
    assert forward.shape == (len(a), len(b))
    np.testing.assert_array_equal(forward, backward.T)
    assert ((forward >= 0.0) & (forward <= 1.0)).all()


@settings(max_examples=150, deadline=None)
@given(boxes=box_arrays, threshold=st.floats(0.0, 1.0), data=st.data())
def test_nms_properties(boxes: np.ndarray, threshold: float, data: st.DataObject) -> None:
    scores = data.draw(hnp.arrays(np.float64, len(boxes), elements=st.floats(0.0, 1.0)))
    kept = nms(boxes, scores, threshold)
    # A subset, without repeats, by decreasing score.
    assert len(set(kept.tolist())) == len(kept)
    assert set(kept.tolist()) <= set(range(len(boxes)))
    assert (np.diff(scores[kept]) <= 0).all()
    # No two kept boxes overlap beyond the threshold...
    overlaps = iou_matrix(boxes[kept], boxes[kept])
    np.fill_diagonal(overlaps, 0.0)
    assert (overlaps <= threshold).all()
    # ...and every dropped box overlaps a kept box that scores at least as high.
    dropped = np.setdiff1d(np.arange(len(boxes)), kept)
    if len(dropped) and len(kept):
        cover = iou_matrix(boxes[dropped], boxes[kept]) > threshold
        higher = scores[kept][None, :] >= scores[dropped][:, None]
        assert (cover & higher).any(axis=1).all()
