"""The synchronous work of a job: preparing an image (on a decode thread), running a batch (in the engine)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.decode import decode_image
from engine.errors import ModelError
from engine.postprocess import raw_tensors, recognize_data
from engine.preprocess import ImageMeta, decode_min_side, preprocess
from schemas.messages import InferenceJob, ModelRef

if TYPE_CHECKING:  # the model runs in the engine process; the consumer only prepares its inputs
    from engine.model import SavedModel


@dataclass(frozen=True)
class PreparedJob:
    job: InferenceJob
    example: np.ndarray
    meta: ImageMeta


@dataclass(frozen=True)
class RunItem:
    """What the engine process needs of one prepared job but its input (which travels in shared memory:
    consumers.engine_buffer). The job itself stays in the consumer: its model reference, the same for a whole
    batch but for a version updated mid-batch, crosses the pipe once per distinct value (with 1,000 labels it
    is tens of kilobytes, and pickling it per image cost more than the rest of the run); `ref` is its index
    among the batch's references."""

    meta: ImageMeta
    ref: int
    output_layers: list[str] | None
    show_discarded: bool
    max_predictions: int

    @classmethod
    def of(cls, prepared: PreparedJob, ref: int) -> RunItem:
        job = prepared.job
        return cls(
            ref=ref,
            meta=prepared.meta,
            output_layers=job.output_layers,
            show_discarded=job.show_discarded,
            max_predictions=job.max_predictions,
        )


def prepare(job: InferenceJob, data: bytes, *, mean: np.ndarray | None, max_pixels: int) -> PreparedJob:
    """Decode and pre-process one image (raises engine ImageError with a reason for the user)."""
    spec = job.model.preprocessing.inputs[0].image
    min_side = decode_min_side(spec, bbox=job.image.bbox, polygon=job.image.polygon)
    image = decode_image(data, max_pixels=max_pixels, min_side=min_side)
    example, meta = preprocess(
        image,
        spec,
        bbox=job.image.bbox,
        polygon=job.image.polygon,
        crop_uniform_background=job.image.crop_uniform_background,
        mean=mean,
    )
    return PreparedJob(job=job, example=example, meta=meta)


def _input_key(model: SavedModel, ref: ModelRef) -> str:
    name = ref.preprocessing.inputs[0].tensor_name
    key = model.signature.resolve_input(name)
    if key is None:
        raise ModelError(f"the network has no input tensor {name!r}")
    return key


def _output_key(model: SavedModel, name: str) -> str:
    key = model.signature.resolve_output(name)
    if key is None:
        known = ", ".join(sorted(model.signature.outputs))
        raise ModelError(f"the network has no output tensor {name!r} (outputs: {known})")
    return key


def _result(
    model: SavedModel, ref: ModelRef, item: RunItem, outputs: dict[str, np.ndarray]
) -> dict[str, Any]:
    if ref.version_id is None:
        names = item.output_layers or sorted(model.signature.outputs)
        tensors = {name: outputs[_output_key(model, name)] for name in names}
        return raw_tensors(tensors, names).model_dump(mode="json")
    wanted = {name for post in ref.post_processings for name in post.tensor_names()}
    tensors = {name: outputs[_output_key(model, name)] for name in wanted}
    # The JSON-ready form straight away: validating a pydantic object per prediction only to dump it again
    # costs more than the rest of post-processing (engine.postprocess, checked equal by its tests).
    return recognize_data(
        tensors,
        item.meta,
        ref.outputs,
        ref.post_processings,
        show_discarded=item.show_discarded,
        max_predictions=item.max_predictions,
    )


@dataclass(frozen=True)
class BatchRun:
    results: list[dict[str, Any] | ModelError]  # one per input, in input order
    predict_s: float  # the forward passes, summed over the batch's shape groups
    postprocess_s: float  # raw outputs to results, summed over the batch


def run_batch(
    model: SavedModel,
    refs: Sequence[ModelRef],
    batch: Sequence[RunItem],
    inputs: Sequence[tuple[Sequence[int], np.ndarray]],
) -> BatchRun:
    """Runs in the engine process (consumers.engine_child): one forward pass per group of equally shaped
    inputs (`inputs`: the indices in `batch` of a group, and its stacked inputs); results (or the model's
    error) in input order."""
    results: list[dict[str, Any] | ModelError] = [ModelError("not run")] * len(batch)
    predict_s = postprocess_s = 0.0
    for group, stacked in inputs:
        started = time.perf_counter()
        try:
            input_key = _input_key(model, refs[batch[group[0]].ref])
            outputs = model.predict({input_key: stacked})
        except ModelError as error:
            for index in group:
                results[index] = error
            continue
        except Exception as error:  # TensorFlow's own errors: the network cannot run this input
            failure = ModelError(
                f"the network failed to run: {str(error).splitlines()[0] if str(error) else error!r}"
            )
            for index in group:
                results[index] = failure
            continue
        finally:
            predict_s += time.perf_counter() - started
        started = time.perf_counter()
        for position, index in enumerate(group):
            single = {name: values[position] for name, values in outputs.items()}
            try:
                results[index] = _result(model, refs[batch[index].ref], batch[index], single)
            except ModelError as error:
                results[index] = error
        postprocess_s += time.perf_counter() - started
    return BatchRun(results=results, predict_s=predict_s, postprocess_s=postprocess_s)
