"""Recognition versions: a spec bound to a network with post-processing (Deepomatic *Recognition Version*)."""

from __future__ import annotations

from typing import Any, Self

from pydantic import Field, model_validator

from schemas.common import StrictModel


class ClassificationPostProcessing(StrictModel):
    output_tensor: str = Field(min_length=1)
    thresholds: list[float] = Field(min_length=1)


class DirectOutput(StrictModel):
    """Boxes `[N, 4]` (normalized xmin, ymin, xmax, ymax) and scores `[N, K]`, K = number of labels."""

    boxes_tensor: str = Field(min_length=1)
    scores_tensor: str = Field(min_length=1)


class DetectionPostProcessing(StrictModel):
    thresholds: list[float] = Field(min_length=1)
    nms_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    direct_output: DirectOutput | None = None
    anchored_output: dict[str, Any] | None = None
    yolo_output: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_decoder(self) -> Self:
        given = [
            name
            for name in ("direct_output", "anchored_output", "yolo_output")
            if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of anchored_output, direct_output or yolo_output")
        if given[0] != "direct_output":
            raise ValueError(f"{given[0]} is not supported yet; use direct_output")
        return self

    def tensor_names(self) -> list[str]:
        assert self.direct_output is not None
        return [self.direct_output.boxes_tensor, self.direct_output.scores_tensor]


class PostProcessing(StrictModel):
    classification: ClassificationPostProcessing | None = None
    detection: DetectionPostProcessing | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.classification is None) == (self.detection is None):
            raise ValueError("give exactly one of classification or detection")
        return self

    @property
    def thresholds(self) -> list[float]:
        chosen = self.classification or self.detection
        assert chosen is not None
        return chosen.thresholds

    def tensor_names(self) -> list[str]:
        if self.classification is not None:
            return [self.classification.output_tensor]
        assert self.detection is not None
        return self.detection.tensor_names()


class VersionCreate(StrictModel):
    spec_id: int
    network_id: int
    post_processings: list[PostProcessing] = Field(min_length=1)
