"""Small deterministic SavedModels for plumbing tests: their answers follow from the input, so tests can
predict them exactly. (The demo models in engine/zoo are the real, trained ones.)"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf


class _Brightness(tf.Module):  # type: ignore[misc]
    """Two labels, "dark" and "bright", scored from the mean pixel value of an RGB image in [0, 1]."""

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        mean = tf.reduce_mean(image, axis=[1, 2, 3])
        logits = tf.stack([(0.5 - mean) * 20.0, (mean - 0.5) * 20.0], axis=1)
        return {"probabilities": tf.nn.softmax(logits), "mean": tf.reshape(mean, [-1, 1])}


class _SlowBrightness(tf.Module):  # type: ignore[misc]
    """The brightness classifier plus about 40 ms of matrix products per image (one core): a job that takes
    long enough that consumers are busy, and faults land mid-batch."""

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        mean = tf.reduce_mean(image, axis=[1, 2, 3])
        work = tf.tile(tf.reshape(mean, [-1, 1, 1]), [1, 320, 320]) + tf.eye(320)
        for _ in range(24):
            work = tf.linalg.normalize(tf.matmul(work, work), axis=[1, 2])[0]
        busy = tf.reduce_sum(work, axis=[1, 2]) * 0.0  # keeps the work in the graph, changes no answer
        logits = tf.stack([(0.5 - mean) * 20.0 + busy, (mean - 0.5) * 20.0], axis=1)
        return {"probabilities": tf.nn.softmax(logits), "mean": tf.reshape(mean, [-1, 1])}


class _WedgedByBrightImages(tf.Module):  # type: ignore[misc]
    """The brightness classifier, except that a bright image (mean above 0.9) spins it practically forever:
    a poison job that passes every check at deployment (its trial runs on zeros) and wedges its thread."""

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        mean = tf.reduce_mean(image, axis=[1, 2, 3])
        rounds = tf.where(tf.reduce_max(mean) > 0.9, tf.constant(2**62, tf.int64), tf.constant(0, tf.int64))
        spun = tf.while_loop(lambda i: i < rounds, lambda i: [i + 1], [tf.constant(0, tf.int64)])
        busy = tf.cast(spun[0] * 0, tf.float32)
        logits = tf.stack([(0.5 - mean) * 20.0 + busy, (mean - 0.5) * 20.0], axis=1)
        return {"probabilities": tf.nn.softmax(logits), "mean": tf.reshape(mean, [-1, 1])}


class _CrashedByBrightImages(tf.Module):  # type: ignore[misc]
    """The brightness classifier, except that a bright image (mean above 0.9) ends its process at once: the
    taken branch feeds a rank-0 tensor to FusedPadConv2D, whose kernel then fails a CHECK (abort(), SIGABRT)
    instead of returning an error. The rank is decided at run time, so neither graph construction nor the
    deployment trial (zeros) sees it, and the op is one the scan has no reason to refuse: a crash bug, the
    kind of poison a real model meets."""

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        mean = tf.reduce_mean(image, axis=[1, 2, 3])
        brightest = tf.reduce_max(mean)

        def crash() -> tf.Tensor:
            # A shape vector whose length is only known at run time: zero, so the reshape gives a scalar.
            rank = tf.cast(brightest * 0.0, tf.int32)
            scalar = tf.reshape(brightest, tf.ones([rank], tf.int32))
            padded = tf.raw_ops.FusedPadConv2D(
                input=scalar,
                paddings=tf.ones([4, 2], tf.int32),
                filter=tf.zeros([1, 1, 0, 1], tf.float32),
                mode="REFLECT",
                strides=[1, 1, 1, 1],
                padding="VALID",
            )
            return tf.reduce_sum(padded) * 0.0

        busy = tf.cond(brightest > 0.9, crash, lambda: tf.constant(0.0))
        logits = tf.stack([(0.5 - mean) * 20.0 + busy, (mean - 0.5) * 20.0], axis=1)
        return {"probabilities": tf.nn.softmax(logits), "mean": tf.reshape(mean, [-1, 1])}


class _Boxes(tf.Module):  # type: ignore[misc]
    """Three candidate boxes for one label; two overlap, so NMS keeps two. Scores scale with brightness."""

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        batch = tf.shape(image)[0]
        mean = tf.reduce_mean(image, axis=[1, 2, 3])
        boxes = tf.constant([[0.1, 0.1, 0.5, 0.5], [0.12, 0.12, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]], tf.float32)
        weights = tf.constant([1.0, 0.9, 0.8], tf.float32)
        scores = tf.reshape(mean, [-1, 1, 1]) * tf.reshape(weights, [1, 3, 1])
        return {"boxes": tf.tile(boxes[tf.newaxis], [batch, 1, 1]), "scores": scores}


class _AnySize(tf.Module):  # type: ignore[misc]
    """The brightness classifier on any input size: what resize_type NETWORK feeds."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        mean = tf.reduce_mean(image, axis=[1, 2, 3])
        logits = tf.stack([(0.5 - mean) * 20.0, (mean - 0.5) * 20.0], axis=1)
        size = tf.cast(tf.shape(image)[1:3], tf.float32)
        return {
            "probabilities": tf.nn.softmax(logits),
            "size": tf.tile(size[tf.newaxis], [tf.shape(image)[0], 1]),
        }


def build_any_size_classifier(path: Path) -> Path:
    module = _AnySize()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def build_brightness_classifier(path: Path) -> Path:
    module = _Brightness()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def build_slow_brightness_classifier(path: Path) -> Path:
    module = _SlowBrightness()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def build_wedging_classifier(path: Path) -> Path:
    module = _WedgedByBrightImages()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def build_crashing_classifier(path: Path) -> Path:
    module = _CrashedByBrightImages()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def build_box_detector(path: Path) -> Path:
    module = _Boxes()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def network_parts(folder: Path) -> dict[str, bytes]:
    """Multipart parts as the official client names them: basenames (`variables.index`, ...)."""
    return {path.name: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
