"""Uploaded graphs that touch files or run Python are refused before TensorFlow loads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tensorflow as tf

from engine.errors import ModelError
from engine.model import SavedModel
from engine.scan import read_saved_model, refused_ops
from tests.models import build_box_detector, build_brightness_classifier


def _save(module: Any, path: Path) -> Path:
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


class _ReadsFiles(tf.Module):  # type: ignore[misc]
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        secret = tf.strings.length(tf.io.read_file("/etc/hostname"))
        return {"scores": image * tf.cast(secret, tf.float32)}


class _WritesFiles(tf.Module):  # type: ignore[misc]
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.control_dependencies([tf.io.write_file("/tmp/percept-scan-test", "owned")]):
            return {"scores": tf.identity(image)}


class _RunsPython(tf.Module):  # type: ignore[misc]
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": tf.numpy_function(lambda x: x, [image], tf.float32)}


def test_ordinary_models_pass(tmp_path: Path) -> None:
    for build in (build_brightness_classifier, build_box_detector):
        folder = build(tmp_path / build.__name__)
        assert refused_ops(read_saved_model(folder)) == []


@pytest.mark.parametrize(
    ("module", "op"), [(_ReadsFiles, "ReadFile"), (_WritesFiles, "WriteFile"), (_RunsPython, "PyFunc")]
)
def test_graphs_reaching_outside_are_refused_before_loading(tmp_path: Path, module: type, op: str) -> None:
    folder = _save(module(), tmp_path / op)
    assert any(found.startswith(op) for found in refused_ops(read_saved_model(folder)))
    with pytest.raises(ModelError, match=op):
        SavedModel.load(folder)
