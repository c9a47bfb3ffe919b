"""Detector demo: the `mtcnn` package's trained face detector, wrapped as one SavedModel."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

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
from schemas.versions import DetectionPostProcessing, DirectOutput, PostProcessing

SIDE = 480  # network input; with FILL, faces from about 20 / 480 of the image's larger side are found
MAX_FACES = 32  # rows of the boxes and scores tensors; zero-score rows are padding
_MIN_SCORE = 0.5  # O-Net face probability below which a box is not worth reporting, even as discarded


def build(path: Path) -> None:
    """Write the cascade with the package's weights as a SavedModel at `path`."""
    import tensorflow as tf  # imported here: listing the demo models must not load TensorFlow

    from engine.zoo.mtcnn_graph import Cascade

    cascade = Cascade(SIDE, SIDE, MAX_FACES, _MIN_SCORE)
    tf.saved_model.save(cascade.module, str(path), signatures={"serving_default": cascade.serve})


def sample_image() -> bytes:
    """scikit-image's astronaut portrait (Eileen Collins, NASA, public domain): a 512x512 PNG it ships."""
    return (files("skimage") / "data" / "astronaut.png").read_bytes()


FACES = DemoModel(
    key="faces",
    name="Faces",
    description="Finds human faces; the MTCNN cascade with the trained weights of the `mtcnn` package.",
    preprocessing=Preprocessing(
        inputs=[
            InputPreprocessing(
                tensor_name="image",
                image=ImagePreprocessing(
                    dimension_order=DimensionOrder.NHWC,
                    resize_type=ResizeType.FILL,
                    target_size=f"{SIDE}x{SIDE}",
                    color_channels=ColorChannels.RGB,
                    pixel_scaling=255.0,  # the graph normalises [0, 255] the way MTCNN was trained
                ),
            )
        ]
    ),
    outputs=[SpecOutput(labels=LabelsOutput(roi=RoiKind.BBOX, labels=[Label(id=0, name="face")]))],
    post_processings=[
        PostProcessing(
            detection=DetectionPostProcessing(
                thresholds=[0.9],
                nms_threshold=0.3,
                direct_output=DirectOutput(boxes_tensor="boxes", scores_tensor="scores"),
            )
        )
    ],
    build=build,
    sample_image=sample_image,
    sample_label="face",
)
