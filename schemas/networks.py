"""Networks: a SavedModel plus how images are pre-processed for it (Deepomatic *Neural Networks*)."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Self

from pydantic import Field, field_validator, model_validator

from schemas.common import LenientBool, StrictModel


class DimensionOrder(str, Enum):
    NCHW = "NCHW"  # channels first
    NCWH = "NCWH"  # channels first, width before height
    NHWC = "NHWC"  # channels last (TensorFlow's default)
    NWHC = "NWHC"  # channels last, width before height


class ResizeType(str, Enum):
    SQUASH = "SQUASH"  # stretch to the target, aspect ratio lost
    CROP = "CROP"  # smaller side fits, centre crop
    FILL = "FILL"  # larger side fits, white padding, centred
    NETWORK = "NETWORK"  # larger side scaled to N, network fed that size


class ColorChannels(str, Enum):
    RGB = "RGB"  # decoded order
    BGR = "BGR"  # channels swapped after decoding
    L = "L"  # luma, one channel


class DataType(str, Enum):
    FLOAT32 = "FLOAT32"  # the only type the Deepomatic client sends


_SIZE = re.compile(r"^(\d+)(?:x(\d+))?$")


class ImagePreprocessing(StrictModel):
    dimension_order: DimensionOrder = DimensionOrder.NHWC
    resize_type: ResizeType = ResizeType.SQUASH
    target_size: str = Field(description="`WxH`, or `N` for the largest side")
    color_channels: ColorChannels = ColorChannels.RGB
    pixel_scaling: float = Field(default=255.0, gt=0)
    mean_file: str | None = Field(default=None, description="name of an uploaded `.npy` file")
    data_type: DataType = DataType.FLOAT32

    @field_validator("target_size")
    @classmethod
    def _size_format(cls, value: str) -> str:
        match = _SIZE.match(value.strip())
        if not match or int(match.group(1)) == 0 or (match.group(2) and int(match.group(2)) == 0):
            raise ValueError("target_size must be `WxH` or `N` with positive integers, e.g. `224x224`")
        return value.strip()

    @model_validator(mode="after")
    def _network_needs_n(self) -> Self:
        if self.resize_type is ResizeType.NETWORK and "x" in self.target_size:
            raise ValueError("resize_type NETWORK takes target_size `N` (the largest side)")
        if self.resize_type in {ResizeType.CROP, ResizeType.FILL} and "x" not in self.target_size:
            raise ValueError(f"resize_type {self.resize_type.value} needs target_size `WxH`")
        return self

    def size(self) -> tuple[int, int | None]:
        """(width, height), or (N, None) for largest-side sizes."""
        match = _SIZE.match(self.target_size)
        assert match is not None
        height = match.group(2)
        return int(match.group(1)), int(height) if height else None


class InputPreprocessing(StrictModel):
    tensor_name: str = Field(min_length=1)
    image: ImagePreprocessing


class Preprocessing(StrictModel):
    inputs: list[InputPreprocessing] = Field(min_length=1, max_length=1)
    batched_output: LenientBool = True


class TensorsOutput(StrictModel):
    tensors: list[str] = Field(min_length=1)


class StandardOutput(StrictModel):
    """Deprecated detection output of the Networks document."""

    boxes_tensor: str
    scores_tensor: str


class NetworkPostprocessing(StrictModel):
    tensors_output: TensorsOutput | None = None
    standard_output: StandardOutput | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.tensors_output is None) == (self.standard_output is None):
            raise ValueError("give exactly one of tensors_output or standard_output")
        return self


class Framework(str, Enum):
    TENSORFLOW_1X = "tensorflow-1.x"  # Deepomatic's name; means a TensorFlow SavedModel
    TENSORFLOW = "tensorflow"  # plain alias


class NetworkCreate(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    framework: Framework
    preprocessing: Preprocessing
    postprocessings: list[NetworkPostprocessing] = Field(default_factory=list)


class NetworkUpdate(StrictModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = None
    metadata: dict[str, Any] | None = None


class NetworkStatus(str, Enum):
    DEPLOYING = "deploying"  # files stored, validation pending
    READY = "ready"  # validated, usable
    FAILED = "failed"  # validation failed; see the deployment task
