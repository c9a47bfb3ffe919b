"""SavedModel loading, signature, predict and warm-up; validate_network against a real signature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from engine.errors import ModelError
from engine.model import SavedModel
from engine.validate import validate_network
from schemas.networks import NetworkPostprocessing, Preprocessing


class Classifier(tf.Module):  # type: ignore[misc]
    """Mean colour times a fixed matrix: four logits and their softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = tf.Variable(np.arange(12, dtype=np.float32).reshape(3, 4))

    @tf.function(  # type: ignore[untyped-decorator]
        input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)]
    )
    def serve(self, image: Any) -> dict[str, Any]:
        logits = tf.reduce_mean(image, axis=[1, 2]) @ self.weights
        return {"probabilities": tf.nn.softmax(logits), "logits": logits}

    @tf.function(  # type: ignore[untyped-decorator]
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)]
    )
    def any_size(self, image: Any) -> dict[str, Any]:
        return {"mean": tf.reduce_mean(image, axis=[1, 2, 3])}

    @tf.function(  # type: ignore[untyped-decorator]
        input_signature=[tf.TensorSpec([None, 2], tf.uint8)]
    )
    def as_bytes(self, pixels: Any) -> dict[str, Any]:
        return {"same": pixels}


def save(directory: Path, signature_names: list[str]) -> Path:
    module = Classifier()
    functions = {"serving_default": module.serve, "any_size": module.any_size, "as_bytes": module.as_bytes}
    tf.saved_model.save(
        module, str(directory), signatures={name: functions[name] for name in signature_names}
    )
    return directory


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SavedModel:
    return SavedModel.load(save(tmp_path_factory.mktemp("classifier"), ["serving_default", "any_size"]))


def preprocessing(**image: object) -> Preprocessing:
    fields = {"target_size": "8x8", **image}
    return Preprocessing.model_validate(
        {"inputs": [{"tensor_name": fields.pop("tensor_name", "image"), "image": fields}]}
    )


def outputs(*names: str) -> list[NetworkPostprocessing]:
    return [NetworkPostprocessing.model_validate({"tensors_output": {"tensors": list(names)}})]


def test_signature_describes_serving_default(model: SavedModel) -> None:
    signature = model.signature
    assert set(signature.inputs) == {"image"}
    assert set(signature.outputs) == {"probabilities", "logits"}
    image = signature.inputs["image"]
    assert (image.shape, image.dtype, image.graph_name) == (
        [None, 8, 8, 3],
        "float32",
        "serving_default_image:0",
    )
    assert signature.outputs["logits"].shape == [None, 4]
    assert signature.resolve_input("serving_default_image:0") == "image"
    assert signature.resolve_input("serving_default_image") == "image"
    for key, spec in signature.outputs.items():
        assert spec.graph_name.startswith("StatefulPartitionedCall")
        assert signature.resolve_output(spec.graph_name) == key


def test_predict_returns_every_output_batch_first(model: SavedModel) -> None:
    batch = np.ones((2, 8, 8, 3), dtype=np.float32)
    batch[1] *= 2
    result = model.predict({"image": batch})
    assert set(result) == {"probabilities", "logits"}
    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(result["logits"], [weights.sum(axis=0), 2 * weights.sum(axis=0)], rtol=1e-6)
    np.testing.assert_allclose(result["probabilities"].sum(axis=1), [1.0, 1.0], rtol=1e-6)
    assert isinstance(result["logits"], np.ndarray)


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        ({"image": np.zeros((1, 7, 8, 3), np.float32)}, r"takes shape \[None, 8, 8, 3\], got \[1, 7, 8, 3\]"),
        ({"image": np.zeros((8, 8, 3), np.float32)}, "takes shape"),
        ({"picture": np.zeros((1, 8, 8, 3), np.float32)}, r"takes inputs \['image'\], not \['picture'\]"),
    ],
)
def test_predict_refuses_what_the_signature_does_not_take(
    model: SavedModel, inputs: dict[str, np.ndarray], reason: str
) -> None:
    with pytest.raises(ModelError, match=reason):
        model.predict(inputs)


def test_predict_casts_to_the_input_dtype(tmp_path: Path) -> None:
    model = SavedModel.load(save(tmp_path / "bytes", ["as_bytes"]))  # the only signature is used
    assert model.signature.inputs["pixels"].dtype == "uint8"
    result = model.predict({"pixels": np.array([[254.6, 3.2]], dtype=np.float32)})
    assert result["same"].tolist() == [[255, 3]]


def test_warm_up_needs_fixed_sizes(model: SavedModel, tmp_path: Path) -> None:
    assert model.warm_up(4) is True
    dynamic = SavedModel.load(save(tmp_path / "any", ["any_size"]))
    assert dynamic.signature.inputs["image"].shape == [None, None, None, 3]
    assert dynamic.warm_up(4) is False


def test_load_refuses_ambiguous_signatures(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"has: \['any_size', 'as_bytes'\]"):
        SavedModel.load(save(tmp_path / "two", ["any_size", "as_bytes"]))


def test_load_refuses_a_directory_without_a_model(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(ModelError, match="cannot be loaded"):
        SavedModel.load(tmp_path)


def test_validate_network_accepts_a_fitting_configuration(model: SavedModel) -> None:
    validate_network(model.signature, preprocessing(), outputs("probabilities", "StatefulPartitionedCall:0"))
    validate_network(
        model.signature, preprocessing(tensor_name="serving_default_image:0", target_size="8"), []
    )


@pytest.mark.parametrize(
    ("image", "posts", "reason"),
    [
        ({"tensor_name": "input"}, [], r"'input' is not in .* inputs are: image \(serving_default_image:0"),
        ({"color_channels": "L"}, [], "has 3 channel.*colour L gives 1"),
        ({"target_size": "8x9"}, [], "takes width 8 and height 8, but target_size 8x9"),
        ({"resize_type": "NETWORK", "target_size": "8"}, [], "NETWORK feeds images of varying size"),
        ({"dimension_order": "NCHW"}, [], "has 8 channel"),
        ({}, ["probabilities", "scores"], r"'scores' is not in .* outputs are: logits"),
    ],
)
def test_validate_network_names_the_problem(
    model: SavedModel, image: dict[str, object], posts: list[str], reason: str
) -> None:
    with pytest.raises(ModelError, match=reason):
        validate_network(model.signature, preprocessing(**image), outputs(*posts) if posts else [])


def test_validate_network_with_dynamic_sizes(tmp_path: Path) -> None:
    signature = SavedModel.load(save(tmp_path / "any", ["any_size"])).signature
    validate_network(signature, preprocessing(resize_type="NETWORK", target_size="300"), outputs("mean"))
    validate_network(signature, preprocessing(target_size="31x17", resize_type="FILL"), [])
