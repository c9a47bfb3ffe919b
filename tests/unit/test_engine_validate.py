"""check_post_processings and validate_network on hand-written signatures; the light modules stay light."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
