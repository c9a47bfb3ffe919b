"""The demo models are real: built from packaged data and weights, they get their sample images right."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from engine.decode import decode_image
from engine.model import SavedModel
from engine.nms import iou_matrix
from engine.preprocess import ImageMeta, map_box_to_original, preprocess
from engine.validate import validate_network
from engine.zoo import DEMO_MODELS, DemoModel
from engine.zoo.digits import DIGITS, held_out
from engine.zoo.faces import FACES, MAX_FACES
from schemas.checks import check_post_processings

# The astronaut's face in skimage.data.astronaut() (512x512), pixels (xmin, ymin, xmax, ymax): what the mtcnn
# package's own pipeline answers, MTCNN().detect_faces(astronaut(), box_format="xyxy") with mtcnn 1.0.0,
# checked by eye (forehead to chin, cheek to cheek). Derived outside our graph, so it checks the port.
ASTRONAUT_FACE = (182.0, 64.0, 265.0, 171.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SavedModel]:
    root = tmp_path_factory.mktemp("zoo")
    built = {}
    for demo in DEMO_MODELS:
        demo.build(root / demo.key)
        built[demo.key] = SavedModel.load(root / demo.key)
    return built


def _batch(demo: DemoModel, image: bytes) -> tuple[dict[str, np.ndarray], ImageMeta]:
    """The sample as the inference path feeds it: decoded, pre-processed as the network document says."""
    (entry,) = demo.preprocessing.inputs
    example, meta = preprocess(decode_image(image), entry.image)
    return {entry.tensor_name: example[None]}, meta


def test_catalogue_keys_are_unique_and_documents_consistent() -> None:
    assert len({demo.key for demo in DEMO_MODELS}) == len(DEMO_MODELS)
    for demo in DEMO_MODELS:
        assert len(demo.outputs) == len(demo.post_processings)
        names = [label.name for output in demo.outputs for label in output.labels.labels]
        assert demo.sample_label in names
        assert demo.sample_image()[:8] == b"\x89PNG\r\n\x1a\n"


def test_listing_the_catalogue_loads_no_heavy_module() -> None:
    # `percept serve` lists demo models in processes that must stay free of TensorFlow.
    heavy = "{'tensorflow', 'sklearn', 'mtcnn', 'skimage'}"
    probe = f"import sys, engine.zoo; print(sorted({heavy} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.parametrize("demo", DEMO_MODELS, ids=lambda demo: demo.key)
def test_documents_fit_the_saved_model(demo: DemoModel, models: dict[str, SavedModel]) -> None:
    signature = models[demo.key].signature
    validate_network(signature, demo.preprocessing, [])
    assert check_post_processings(signature, demo.outputs, demo.post_processings) == []


@pytest.mark.slow
def test_digits_generalises_to_held_out_digits(models: dict[str, SavedModel]) -> None:
    images, labels = held_out()
    probabilities = models["digits"].predict({"image": images})["probabilities"]
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    assert accuracy >= 0.95


@pytest.mark.slow
def test_digits_reads_its_sample_image(models: dict[str, SavedModel]) -> None:
    batch, _ = _batch(DIGITS, DIGITS.sample_image())
    (probabilities,) = models["digits"].predict(batch)["probabilities"]
    (post,) = DIGITS.post_processings
    assert post.classification is not None
    best = int(probabilities.argmax())
    assert str(best) == DIGITS.sample_label
    assert probabilities[best] >= post.classification.thresholds[best]


@pytest.mark.slow
def test_faces_finds_the_astronaut(models: dict[str, SavedModel]) -> None:
    batch, meta = _batch(FACES, FACES.sample_image())
    outputs = models["faces"].predict(batch)
    boxes, scores = outputs["boxes"][0], outputs["scores"][0, :, 0]
    assert boxes.shape == (MAX_FACES, 4)
    (post,) = FACES.post_processings
    assert post.detection is not None
    found = boxes[scores >= post.detection.thresholds[0]]
    assert len(found) == 1
    xmin, ymin, xmax, ymax = (float(value) for value in found[0])
    on_original = np.asarray(map_box_to_original((xmin, ymin, xmax, ymax), meta))
    width, height = meta.original_width, meta.original_height
    in_pixels = on_original * np.asarray([width, height, width, height])
    assert iou_matrix(in_pixels[None], np.asarray([ASTRONAUT_FACE]))[0, 0] >= 0.5


@pytest.mark.slow
def test_faces_reports_nothing_on_a_blank_image(models: dict[str, SavedModel]) -> None:
    outputs = models["faces"].predict({"image": np.full((2, 480, 480, 3), 255.0, dtype=np.float32)})
    assert outputs["scores"].shape == (2, MAX_FACES, 1)
    assert not outputs["scores"].any()
    assert not outputs["boxes"].any()  # padding rows are zeros
