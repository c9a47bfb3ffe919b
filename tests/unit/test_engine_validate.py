"""check_post_processings and validate_network on hand-written signatures; the light modules stay light."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from engine.errors import ModelError
from engine.validate import validate_network
from schemas.checks import check_post_processings
from schemas.networks import Preprocessing
from schemas.signature import Signature, TensorSpec
from schemas.specs import SpecOutput
from schemas.versions import PostProcessing


def tensor(shape: list[int | None], graph_name: str) -> TensorSpec:
    return TensorSpec(shape=shape, dtype="float32", graph_name=graph_name)


SIGNATURE = Signature(
    inputs={"image": tensor([None, 32, 32, 3], "serving_default_image:0")},
    outputs={
        "probabilities": tensor([None, 3], "StatefulPartitionedCall:0"),
        "boxes": tensor([None, 100, 4], "StatefulPartitionedCall:1"),
        "scores": tensor([None, 100, 3], "StatefulPartitionedCall:2"),
        "wide_boxes": tensor([None, 100, 5], "StatefulPartitionedCall:3"),
        "unknown": tensor([None, None], "StatefulPartitionedCall:4"),
    },
)
LABELS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]


def spec(roi: str, labels: int = 3) -> SpecOutput:
    return SpecOutput.model_validate({"labels": {"roi": roi, "labels": LABELS[:labels]}})


def classification(tensor_name: str = "probabilities", thresholds: int = 3) -> PostProcessing:
    return PostProcessing.model_validate(
        {"classification": {"output_tensor": tensor_name, "thresholds": [0.5] * thresholds}}
    )


def detection(boxes: str = "boxes", scores: str = "scores") -> PostProcessing:
    direct = {"boxes_tensor": boxes, "scores_tensor": scores}
    return PostProcessing.model_validate({"detection": {"thresholds": [0.5] * 3, "direct_output": direct}})


def test_fitting_post_processings_have_no_problems() -> None:
    both = check_post_processings(SIGNATURE, [spec("NONE"), spec("BBOX")], [classification(), detection()])
    assert both == []
    by_graph_name = [classification("StatefulPartitionedCall:0")]
    assert check_post_processings(SIGNATURE, [spec("NONE")], by_graph_name) == []
    # An unknown last dimension cannot be checked, so it passes.
    assert check_post_processings(SIGNATURE, [spec("NONE")], [classification("unknown")]) == []


@pytest.mark.parametrize(
    ("outputs", "posts", "expected"),
    [
        ([spec("NONE")], [classification()] * 2, ["the spec has 1 output(s)"]),
        (
            [spec("NONE")],
            [classification(thresholds=2)],
            ["has 2 value(s) but the spec output has 3 label(s)"],
        ),
        ([spec("BBOX")], [classification()], ["roi BBOX: use a detection"]),
        ([spec("NONE")], [detection()], ["roi NONE: use a classification"]),
        ([spec("NONE")], [classification("logits")], ["no output tensor 'logits'"]),
        ([spec("NONE", labels=2)], [classification(thresholds=2)], ["last dimension 3, expected 2"]),
        ([spec("BBOX")], [detection(boxes="wide_boxes")], ["'wide_boxes' has last dimension 5, expected 4"]),
        ([spec("BBOX")], [detection(scores="probabilities", boxes="nope")], ["no output tensor 'nope'"]),
    ],
)
def test_each_problem_is_named(
    outputs: list[SpecOutput], posts: list[PostProcessing], expected: list[str]
) -> None:
    problems = check_post_processings(SIGNATURE, outputs, posts)
    assert len(problems) == len(expected), problems
    for (_field, reason), fragment in zip(problems, expected, strict=True):
        assert fragment in reason


DETECTORS = Signature(
    inputs={"image": tensor([None, 416, 416, 3], "serving_default_image:0")},
    outputs={
        "anchors": tensor([None, 100, 4], "StatefulPartitionedCall:0"),
        "offsets": tensor([None, 100, 4], "StatefulPartitionedCall:1"),
        "logits": tensor([None, 100, 4], "StatefulPartitionedCall:2"),  # background + 3 labels
        "few_offsets": tensor([None, 90, 4], "StatefulPartitionedCall:3"),
        "grid": tensor([None, 13, 13, 16], "StatefulPartitionedCall:4"),  # 2 anchors x (5 + 3)
        "grid_5d": tensor([None, 13, 13, 2, 8], "StatefulPartitionedCall:5"),
        "any_grid": tensor([None, None, None, None], "StatefulPartitionedCall:6"),
    },
)


def anchored(**fields: object) -> PostProcessing:
    names = {"anchors_tensor": "anchors", "offsets_tensor": "offsets", "scores_tensor": "logits"}
    return PostProcessing.model_validate(
        {
            "detection": {
                "thresholds": [0.5] * 3,
                "anchored_output": names | {"background_class": True} | fields,
            }
        }
    )


def yolo(**fields: object) -> PostProcessing:
    base = {"output_tensor": "grid", "anchors": [[10, 13], [33, 23]], "stride": 32}
    return PostProcessing.model_validate(
        {"detection": {"thresholds": [0.5] * 3, "yolo_output": base | fields}}
    )


@pytest.mark.parametrize(
    "post",
    [anchored(), yolo(), yolo(output_tensor="grid_5d"), yolo(output_tensor="any_grid")],
    ids=["anchored", "yolo", "yolo-5d", "yolo-unknown-dims"],
)
def test_fitting_decoders_have_no_problems(post: PostProcessing) -> None:
    assert check_post_processings(DETECTORS, [spec("BBOX")], [post]) == []
    assert check_post_processings(None, [spec("BBOX")], [post]) == []  # not deployed: checked at first job


ANCHORED = "post_processings[0].detection.anchored_output"
YOLO = "post_processings[0].detection.yolo_output.output_tensor"


@pytest.mark.parametrize(
    ("post", "field", "fragment"),
    [
        (anchored(background_class=False), f"{ANCHORED}.scores_tensor", "set background_class to true"),
        (
            anchored(scores_tensor="grid"),
            f"{ANCHORED}.scores_tensor",
            "expected 4 (3 label(s) after the background column",
        ),
        (anchored(background_class=False, scores_tensor="grid"), f"{ANCHORED}.scores_tensor", "expected 3"),
        (
            anchored(anchors_tensor="grid"),
            f"{ANCHORED}.anchors_tensor",
            "expected 4 ((ymin, xmin, ymax, xmax))",
        ),
        (anchored(offsets_tensor="few_offsets"), ANCHORED, "anchors_tensor 100, offsets_tensor 90"),
        (anchored(anchors_tensor="priors"), f"{ANCHORED}.anchors_tensor", "no output tensor 'priors'"),
        (yolo(anchors=[[1, 1]] * 3), YOLO, "it needs [batch, H, W, 24] or [batch, H, W, 3, 8]"),
        (yolo(output_tensor="grid_5d", anchors=[[1, 1]] * 3), YOLO, "has shape [None, 13, 13, 2, 8]"),
        (
            yolo(output_tensor="anchors"),
            YOLO,
            "2 anchor(s) x (tx, ty, tw, th, objectness and 3 class score(s))",
        ),
        (yolo(output_tensor="nope"), YOLO, "no output tensor 'nope'"),
    ],
)
def test_decoder_problems_name_the_field(post: PostProcessing, field: str, fragment: str) -> None:
    problems = check_post_processings(DETECTORS, [spec("BBOX")], [post])
    assert len(problems) == 1, problems
    assert problems[0][0] == field
    assert fragment in problems[0][1]


def test_decoders_need_a_bbox_output() -> None:
    problems = check_post_processings(DETECTORS, [spec("NONE")], [yolo()])
    assert problems == [
        ("post_processings[0]", "the spec output has roi NONE: use a classification post-processing")
    ]


def test_tensor_names_are_those_each_decoder_reads() -> None:
    assert anchored().tensor_names() == ["anchors", "offsets", "logits"]
    assert yolo().tensor_names() == ["grid"]
    assert detection().tensor_names() == ["boxes", "scores"]


def invalid(detection: dict[str, object]) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        PostProcessing.model_validate({"detection": {"thresholds": [0.5]} | detection})
    return [(tuple(error["loc"]), error["msg"]) for error in caught.value.errors()]


YOLO_BASE = {"output_tensor": "grid", "anchors": [[10, 13]]}
ANCHORED_BASE = {"anchors_tensor": "a", "offsets_tensor": "o", "scores_tensor": "s"}


@pytest.mark.parametrize(
    ("detection", "loc", "fragment"),
    [
        ({}, ("detection",), "exactly one of anchored_output, direct_output or yolo_output"),
        (
            {"yolo_output": YOLO_BASE | {"stride": 32}, "anchored_output": ANCHORED_BASE},
            ("detection",),
            "exactly one of",
        ),
        ({"yolo_output": YOLO_BASE}, ("detection", "yolo_output"), "exactly one of stride or input_size"),
        (
            {"yolo_output": YOLO_BASE | {"stride": 32, "input_size": [416, 416]}},
            ("detection", "yolo_output"),
            "exactly one of stride or input_size",
        ),
        (
            {"yolo_output": YOLO_BASE | {"anchor_units": "cells", "stride": 32}},
            ("detection", "yolo_output"),
            "need neither stride nor input_size",
        ),
        (
            {"yolo_output": YOLO_BASE | {"stride": 0}},
            ("detection", "yolo_output", "stride"),
            "greater than 0",
        ),
        (
            {"yolo_output": {"output_tensor": "g", "anchors": [[1, 2, 3]], "stride": 8}},
            ("detection", "yolo_output", "anchors", 0),
            "at most 2 items",
        ),
        (
            {"yolo_output": YOLO_BASE | {"stride": 8, "version": "v4"}},
            ("detection", "yolo_output", "version"),
            "v2",
        ),
        (
            {"yolo_output": YOLO_BASE | {"input_size": [416]}},
            ("detection", "yolo_output", "input_size"),
            "at least 2 items",
        ),
        (
            {"anchored_output": ANCHORED_BASE | {"scale_factors": [10, 10, 5]}},
            ("detection", "anchored_output", "scale_factors"),
            "at least 4 items",
        ),
        (
            {"anchored_output": ANCHORED_BASE | {"scale_factors": [10, 0, 5, 5]}},
            ("detection", "anchored_output", "scale_factors", 1),
            "greater than 0",
        ),
        (
            {"anchored_output": ANCHORED_BASE | {"score_activation": "relu"}},
            ("detection", "anchored_output", "score_activation"),
            "'sigmoid'",
        ),
        (
            {"anchored_output": ANCHORED_BASE | {"box_coder": "ssd"}},
            ("detection", "anchored_output", "box_coder"),
            "Extra inputs are not permitted",
        ),
    ],
)
def test_schema_errors_name_the_field(
    detection: dict[str, object], loc: tuple[str | int, ...], fragment: str
) -> None:
    errors = invalid(detection)
    assert len(errors) == 1, errors
    assert errors[0][0] == loc
    assert fragment in errors[0][1]


def test_schema_defaults() -> None:
    post = PostProcessing.model_validate(
        {"detection": {"thresholds": [0.5], "anchored_output": ANCHORED_BASE, "nms_threshold": 0.3}}
    )
    assert post.detection is not None and post.detection.anchored_output is not None
    dumped = post.detection.anchored_output.model_dump(mode="json")
    assert dumped == ANCHORED_BASE | {
        "background_class": False,
        "scale_factors": [10.0, 10.0, 5.0, 5.0],
        "score_activation": "none",
    }
    yolo_post = PostProcessing.model_validate(
        {"detection": {"thresholds": [0.5], "yolo_output": YOLO_BASE | {"stride": 32}}}
    )
    assert yolo_post.detection is not None and yolo_post.detection.yolo_output is not None
    assert yolo_post.detection.yolo_output.model_dump(mode="json") == YOLO_BASE | {
        "anchors": [[10.0, 13.0]],
        "anchor_units": "pixels",
        "version": "v3",
        "stride": 32,
        "input_size": None,
    }


def image_input(tensor_name: str = "image") -> Preprocessing:
    return Preprocessing.model_validate(
        {"inputs": [{"tensor_name": tensor_name, "image": {"target_size": "32x32"}}]}
    )


def test_validate_network_needs_rank_four_and_every_input_fed() -> None:
    flat = Signature(inputs={"image": tensor([None, 3072], "x:0")}, outputs={})
    with pytest.raises(ModelError, match="needs exactly 4 dimensions"):
        validate_network(flat, image_input(), [])
    two = Signature(
        inputs={"image": tensor([None, 32, 32, 3], "a:0"), "scale": tensor([None], "b:0")}, outputs={}
    )
    with pytest.raises(ModelError, match=r"also needs inputs \['scale'\]"):
        validate_network(two, image_input(), [])


def test_validate_network_standard_output_names_resolve() -> None:
    from schemas.networks import NetworkPostprocessing

    standard = NetworkPostprocessing.model_validate(
        {"standard_output": {"boxes_tensor": "boxes", "scores_tensor": "missing"}}
    )
    with pytest.raises(ModelError, match="'missing' is not in"):
        validate_network(SIGNATURE, image_input(), [standard])


def test_light_engine_modules_do_not_import_tensorflow() -> None:
    code = (
        "import sys, engine.decode, engine.preprocess, engine.postprocess, engine.validate, engine.nms, "
        "engine.model; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
