"""Classifier demo: a small convolutional network trained on scikit-learn's handwritten digits."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.zoo.demo import DemoModel
from schemas.networks import (
    ColorChannels,
    DimensionOrder,
    ImagePreprocessing,
    InputPreprocessing,
    Preprocessing,
    ResizeType,
)
from schemas.specs import Label, LabelsOutput, RoiKind, SpecOutput
from schemas.versions import ClassificationPostProcessing, PostProcessing

SIDE = 8  # load_digits images are 8x8
INK = 16.0  # load_digits pixel values run from 0 (background) to 16 (ink)
SEED = 0
_SAMPLE_DIGIT = 7
_SAMPLE_SIDE = 64


def _split() -> tuple[Any, Any, Any, Any]:
    """(train images, held-out images, train labels, held-out labels), the same for every caller, so the
    sample digit is never trained on. Images are [N, 8, 8, 1] float32 in 0..16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    images = images.reshape(-1, SIDE, SIDE, 1).astype(np.float32)
    train, test, train_labels, test_labels = train_test_split(
        images, labels, test_size=0.25, random_state=SEED, stratify=labels
    )
    return train, test, train_labels, test_labels


def held_out() -> tuple[np.ndarray[Any, np.dtype[np.float32]], np.ndarray[Any, np.dtype[np.int64]]]:
    """Held-out images ([N, 8, 8, 1], 0..16) and labels, for measuring accuracy."""
    _, test_images, _, test_labels = _split()
    return test_images, test_labels.astype(np.int64)


def _shifted(images: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The images and their one-pixel shifts: users' digits are rarely centred like the training set."""
    copies = [images]
    for axis in (1, 2):
        for step in (-1, 1):
            copy = np.roll(images, step, axis=axis)
            edge = 0 if step == 1 else -1
            index: list[slice | int] = [slice(None)] * images.ndim
            index[axis] = edge
            copy[tuple(index)] = 0.0  # no wrap-around: what rolls off one side must not reappear opposite
            copies.append(copy)
    return np.concatenate(copies)


def _round_trip(image: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """An 8x8 digit drawn large and shrunk back as Percept's pre-processing does (bilinear): softer strokes,
    which is how a user's photo of a digit reaches the network."""
    pixels = Image.fromarray(image[:, :, 0])  # float32, so mode F: no rounding to 8 bits
    large = pixels.resize((_SAMPLE_SIDE, _SAMPLE_SIDE), Image.Resampling.BILINEAR)
    small = large.resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32)[:, :, None]


def _train(keras: Any) -> Any:
    """A small CNN fitted deterministically: seeded initialisers and a fixed sample order."""
    train_images, _, train_labels, _ = _split()
    shifted = _shifted(train_images)
    images = np.concatenate([shifted, np.stack([_round_trip(image) for image in shifted])])
    labels = np.tile(train_labels, len(images) // len(train_images))  # both copies keep the original order
    # One pass over pre-shuffled epochs instead of fit(shuffle=True): Keras' shuffling draws from the global
    # TensorFlow seed, which a library must not set.
    epochs = 4
    rng = np.random.default_rng(SEED)
    order = np.concatenate([rng.permutation(len(images)) for _ in range(epochs)])

    def init(layer: int) -> Any:
        return keras.initializers.GlorotUniform(seed=SEED + layer)

    model = keras.Sequential(
        [
            keras.Input((SIDE, SIDE, 1)),
            keras.layers.Rescaling(1.0 / INK),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init(1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", kernel_initializer=init(2)),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu", kernel_initializer=init(3)),
            keras.layers.Dense(10, activation="softmax", kernel_initializer=init(4)),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(images[order], labels[order], batch_size=128, epochs=1, shuffle=False, verbose=0)
    return model


def build(path: Path) -> None:
    """Train the classifier and write it as a SavedModel at `path`: {"image"} -> {"probabilities"}."""
    import tensorflow as tf  # imported here: listing the demo models must not load TensorFlow

    model = _train(tf.keras)
    module = tf.Module()
    module.model = model  # tracked, so its variables are saved

    def probabilities(image: Any) -> dict[str, Any]:
        return {"probabilities": model(image, training=False)}

    module.serve = serve = tf.function(
        probabilities, input_signature=[tf.TensorSpec([None, SIDE, SIDE, 1], tf.float32, name="image")]
    )
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def sample_image() -> bytes:
    """A held-out 7, upscaled to a 64x64 PNG drawn like the training set: light strokes on black."""
    images, labels = held_out()
    digit = images[int(np.flatnonzero(labels == _SAMPLE_DIGIT)[0]), :, :, 0]
    gray = Image.fromarray(np.round(digit * 255.0 / INK).astype(np.uint8))  # mode L
    buffer = io.BytesIO()
    gray.resize((_SAMPLE_SIDE, _SAMPLE_SIDE), Image.Resampling.BILINEAR).save(buffer, format="PNG")
    return buffer.getvalue()


DIGITS = DemoModel(
    key="digits",
    name="Handwritten digits",
    description="Reads a light-on-dark handwritten digit (0-9); trained on scikit-learn's digits dataset.",
    preprocessing=Preprocessing(
        inputs=[
            InputPreprocessing(
                tensor_name="image",
                image=ImagePreprocessing(
                    dimension_order=DimensionOrder.NHWC,
                    resize_type=ResizeType.SQUASH,
                    target_size=f"{SIDE}x{SIDE}",
                    color_channels=ColorChannels.L,
                    pixel_scaling=INK,  # 8-bit 255 becomes 16, the training set's ink value
                ),
            )
        ]
    ),
    outputs=[
        SpecOutput(
            labels=LabelsOutput(
                roi=RoiKind.NONE,
                exclusive=True,
                labels=[Label(id=digit, name=str(digit)) for digit in range(10)],
            )
        )
    ],
    post_processings=[
        PostProcessing(
            classification=ClassificationPostProcessing(output_tensor="probabilities", thresholds=[0.5] * 10)
        )
    ],
    build=build,
    sample_image=sample_image,
    sample_label=str(_SAMPLE_DIGIT),
)
