"""Test images, and prepared jobs for the 16x16 test classifiers, with no TensorFlow import: a benchmark's
fork-server children import their caller's module (bench.engine_starts uses these), and tests.conftest pulls
TensorFlow in through tests.models."""

from __future__ import annotations

import io

from PIL import Image

from consumers.compute import PreparedJob, prepare
from schemas.messages import InferenceJob, JobImage, ModelRef
from schemas.networks import Preprocessing

# The input of the 16x16 test classifiers (tests.models), pixels as they are: brightness is the mean pixel.
PREPROCESSING_16X16 = Preprocessing.model_validate(
    {"inputs": [{"tensor_name": "image", "image": {"target_size": "16x16", "pixel_scaling": 1.0}}]}
)


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def grey_job(network_id: str, grey: int) -> PreparedJob:
    """A job of one grey level, prepared for a 16x16 classifier: 255 is what the crashing one aborts on."""
    data = png((grey, grey, grey))
    job = InferenceJob(
        task_id=f"t{grey}",
        owner="1",
        model=ModelRef(network_id=network_id, network_files=[], preprocessing=PREPROCESSING_16X16),
        image=JobImage(data=data),
    )
    return prepare(job, data, mean=None, max_pixels=10_000_000)
