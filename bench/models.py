"""The benchmark's two networks, built locally and cached as SavedModels: {"image"} -> {"probabilities"}.

Weights are random (no model hub is reachable here, and a speed benchmark does not need trained ones): the
forward pass costs the same. `mobilenet_v2` is the realistic load; `tiny` runs a few thousand images/s, so
the time Percept spends around the model (HTTP, broker, store, decoding) dominates and shows.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED = 0


@dataclass(frozen=True)
class BenchModel:
    key: str
    side: int  # square RGB input, pixels
    classes: int
    pixel_scaling: float  # Percept feeds value / 255 * pixel_scaling
    build: Callable[[Any], Any]  # tf.keras -> an uncompiled keras model taking [N, side, side, 3]

    def folder(self, cache: Path) -> Path:
        return cache / self.key

    def network_fields(self) -> dict[str, str]:
        """The text fields of `POST /v0.7/networks/`, flattened as the official client sends them."""
        return {
            "name": f"bench {self.key}",
            "framework": "tensorflow-1.x",
            "preprocessing.inputs[0]tensor_name": "image",
            "preprocessing.inputs[0]image.target_size": f"{self.side}x{self.side}",
            "preprocessing.inputs[0]image.pixel_scaling": str(self.pixel_scaling),
        }

    def spec_body(self) -> dict[str, Any]:
        labels = [{"id": index, "name": f"class {index}"} for index in range(self.classes)]
        return {"name": f"bench {self.key}", "outputs": [{"labels": {"roi": "NONE", "labels": labels}}]}

    def post_processings(self) -> list[dict[str, Any]]:
        # Thresholds of 1.0 predict nothing, yet every score is still compared and sorted: the full cost.
        thresholds = [1.0] * self.classes
        return [{"classification": {"output_tensor": "probabilities", "thresholds": thresholds}}]


def _mobilenet_v2(keras: Any) -> Any:
    # MobileNetV2 takes pixels in [-1, 1]; Percept gives [0, 2] with pixel_scaling 2, so shift inside.
    inputs = keras.Input((224, 224, 3))
    core = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    return keras.Model(inputs, core(inputs - 1.0))


def _tiny(keras: Any) -> Any:
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Conv2D(8, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(16, 3, activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10, activation="softmax"),
        ]
    )


MODELS: tuple[BenchModel, ...] = (
    BenchModel("mobilenet_v2", side=224, classes=1000, pixel_scaling=2.0, build=_mobilenet_v2),
    BenchModel("tiny", side=32, classes=10, pixel_scaling=1.0, build=_tiny),
)


def ensure_built(model: BenchModel, cache: Path) -> Path:
    """The model's SavedModel folder in `cache`, built on first use (MobileNetV2: about 20 s)."""
    folder = model.folder(cache)
    if (folder / "saved_model.pb").exists():
        return folder
    import tensorflow as tf  # only when building: a cached run never loads TensorFlow in this process

    tf.keras.utils.set_random_seed(SEED)
    network = model.build(tf.keras)
    module = tf.Module()
    module.network = network  # tracked, so its variables are saved

    def probabilities(image: Any) -> dict[str, Any]:
        return {"probabilities": network(image, training=False)}

    signature = tf.TensorSpec([None, model.side, model.side, 3], tf.float32, name="image")
    module.serve = serve = tf.function(probabilities, input_signature=[signature])
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a run stopped while saving
    tf.saved_model.save(module, str(partial), signatures={"serving_default": serve})
    partial.rename(folder)  # a run stopped half-way never leaves a folder that looks finished
    return folder


def network_parts(folder: Path) -> dict[str, bytes]:
    """The SavedModel's files as multipart parts, named by basename as the official client names them."""
    return {path.name: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
