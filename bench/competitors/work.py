"""The work every competitor server does per request, the same as a Percept consumer does for these models.

Runs inside the competitors' own virtualenvs, which hold numpy, Pillow and TensorFlow but not Percept: so it
repeats, in a few lines, what engine.decode.decode_image + engine.preprocess.preprocess do for the bench
models (JPEG decoded in the DCT domain down to the network's side, RGB, SQUASH resize with bilinear
filtering, value / 255 * pixel_scaling), and what the classification post-processing costs (every score
ranked). tests/unit/test_bench_competitor_work.py holds it to the engine's output.
"""

from __future__ import annotations

import functools
import io
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TOP_K = 5  # what a server answers: the best classes and their scores (Percept answers its recognitions)
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")


@dataclass(frozen=True)
class ModelShape:
    key: str  # the name the server gives the model
    folder: Path  # the SavedModel, built by bench.models
    side: int
    pixel_scaling: float


def parse_model(text: str) -> ModelShape:
    """`KEY:FOLDER:SIDE:PIXEL_SCALING`, as the benchmark passes it on a server's command line (the folder
    may hold colons; the key may not)."""
    key, rest = text.split(":", 1)
    folder, side, scaling = rest.rsplit(":", 2)
    return ModelShape(key, Path(folder), int(side), float(scaling))


def prepare(data: bytes, side: int, pixel_scaling: float) -> np.ndarray:
    """One JPEG to one `side x side x 3` float32 example."""
    with Image.open(io.BytesIO(data), formats=FORMATS) as image:
        return prepare_opened(image, side, pixel_scaling)


def prepare_opened(image: Image.Image, side: int, pixel_scaling: float) -> np.ndarray:
    """`prepare` for an image Pillow has opened but not decoded yet (what BentoML hands its APIs)."""
    if image.format == "JPEG":
        image.draft("RGB", (side, side))
    image.load()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if rgb.size != (side, side):
        rgb = rgb.resize((side, side), Image.Resampling.BILINEAR)
    pixels = np.asarray(rgb, dtype=np.float32)
    return pixels / np.float32(255.0) * np.float32(pixel_scaling)


def top_k(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The TOP_K classes of each row, best first, and their scores: int32 and float32, `[N, TOP_K]`."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K]
    return order.astype(np.int32), np.take_along_axis(probabilities, order, axis=1).astype(np.float32)


def set_tf_threads(intra_op: int, inter_op: int) -> None:
    """This process's TensorFlow thread pools, before any op runs (0: leave that one as it is); says what
    TensorFlow then holds on stderr, in the server's log."""
    import tensorflow as tf

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    print(
        "bench: TensorFlow intra-op threads "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, inter-op "
        f"{tf.config.threading.get_inter_op_parallelism_threads() or 'default'} (pid {os.getpid()})",
        file=sys.stderr,
        flush=True,
    )


class Predictor:
    """A SavedModel's serving signature with the decoding around it, for a whole batch of JPEGs."""

    def __init__(self, shape: ModelShape, decode_threads: int) -> None:
        import tensorflow as tf

        self.shape = shape
        self._loaded = tf.saved_model.load(str(shape.folder))  # owns the variables: keep it referenced
        self._function = self._loaded.signatures["serving_default"]
        # Pillow releases the GIL while decoding and resizing: a pool decodes a batch on several cores.
        self._pool = ThreadPoolExecutor(decode_threads) if decode_threads > 1 else None
        self(np.zeros([1, shape.side, shape.side, 3], np.float32))  # the first call traces

    def __call__(self, examples: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        probabilities: Any = self._function(image=tf.constant(examples))["probabilities"]
        return np.asarray(probabilities.numpy())

    def predict_jpegs(self, jpegs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        side, scaling = self.shape.side, self.shape.pixel_scaling
        return self._predict([functools.partial(prepare, data, side, scaling) for data in jpegs])

    def predict_images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        side, scaling = self.shape.side, self.shape.pixel_scaling
        return self._predict([functools.partial(prepare_opened, image, side, scaling) for image in images])

    def _predict(self, jobs: list[Callable[[], np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        if self._pool is None or len(jobs) == 1:
            examples = [job() for job in jobs]
        else:
            examples = list(self._pool.map(lambda job: job(), jobs))
        return top_k(self(np.stack(examples)))
