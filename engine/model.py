"""A TensorFlow SavedModel's serving signature, run on numpy batches.

The only engine module that imports TensorFlow, and only when a model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelError
from engine.scan import check_saved_model, read_saved_model
from schemas.signature import Signature, TensorSpec

SERVING_KEY = "serving_default"


class SavedModel:
    """One signature of a loaded SavedModel; `predict` is safe to call from several threads."""

    def __init__(self, loaded: Any, function: Any, signature: Signature) -> None:
        # The loaded object owns the variables: the function breaks if it is garbage collected.
        self._loaded = loaded
        self._function = function
        self._signature = signature

    @classmethod
    def load(cls, path: Path) -> SavedModel:
        """Load the SavedModel directory `path`, using `serving_default` or else its only signature."""
        import tensorflow as tf

        proto = read_saved_model(path)
        check_saved_model(proto)  # before loading: loading alone may run the graph's initialisers
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as error:  # TensorFlow raises many unrelated types for bad files
            raise ModelError(f"the SavedModel in {path.name!r} cannot be loaded: {error}") from None
        signatures = dict(loaded.signatures)
        if SERVING_KEY in signatures:
            key = SERVING_KEY
        elif len(signatures) == 1:
            key = next(iter(signatures))
        else:
            raise ModelError(
                f"the SavedModel needs a {SERVING_KEY!r} signature (or exactly one signature); "
                f"it has: {sorted(signatures) or 'none'}"
            )
        function = signatures[key]
        return cls(loaded, function, _signature(function, _graph_names(proto, key)))

    @property
    def signature(self) -> Signature:
        return self._signature

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch, `inputs` keyed by signature input keys; every output, batch dimension first."""
        import tensorflow as tf

        expected = self._signature.inputs
        if set(inputs) != set(expected):
            raise ModelError(f"the model takes inputs {sorted(expected)}, not {sorted(inputs)}")
        feed = {key: tf.constant(_conform(key, inputs[key], expected[key])) for key in expected}
        try:
            outputs = self._function(**feed)
        except tf.errors.OpError as error:
            raise ModelError(f"the model failed on this batch: {error.message}") from None
        return {key: value.numpy() for key, value in outputs.items()}

    def warm_up(self, batch_size: int) -> bool:
        """Run once on zeros so the first real batch is not slow; False when input sizes are not fixed."""
        zeros: dict[str, np.ndarray] = {}
        for key, spec in self._signature.inputs.items():
            dims = [dim for dim in spec.shape[1:] if dim is not None]
            if not spec.shape or len(dims) != len(spec.shape) - 1 or not _numeric(spec.dtype):
                return False
            zeros[key] = np.zeros([batch_size, *dims], dtype=spec.dtype)
        self.predict(zeros)
        return True


def _conform(key: str, value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    # Concrete functions do not check static shapes themselves: a wrong size would run and give nonsense.
    shape = list(value.shape)
    fits = len(shape) == len(spec.shape) and all(
        want in (None, got) for want, got in zip(spec.shape, shape, strict=True)
    )
    if spec.shape and not fits:
        raise ModelError(f"input {key!r} takes shape {spec.shape}, got {shape}")
    dtype = np.dtype(spec.dtype)
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(value.dtype, np.integer):
        # E.g. a uint8 image input fed float pixels scaled to 255: round, do not truncate.
        value = np.rint(value)
    return np.asarray(value, dtype=dtype)


def _numeric(dtype: str) -> bool:
    try:
        return np.issubdtype(np.dtype(dtype), np.number) or dtype == "bool"
    except TypeError:
        return False


def _signature(function: Any, graph_names: dict[str, dict[str, str]]) -> Signature:
    _, kwargs = function.structured_input_signature
    return Signature(
        inputs={key: _tensor_spec(spec, graph_names["inputs"].get(key, key)) for key, spec in kwargs.items()},
        outputs={
            key: _tensor_spec(spec, graph_names["outputs"].get(key, key))
            for key, spec in function.structured_outputs.items()
        },
    )


def _tensor_spec(spec: Any, graph_name: str) -> TensorSpec:
    shape = spec.shape.as_list() if spec.shape.rank is not None else []
    return TensorSpec(shape=shape, dtype=spec.dtype.name, graph_name=graph_name)


def _graph_names(model: Any, key: str) -> dict[str, dict[str, str]]:
    """Tensor names as the SavedModel's signature def records them (what `saved_model_cli show` prints).

    They are the names users know from the original graph, e.g. `serving_default_image:0` or
    `inception_v3/logits/predictions:0`; the loaded function's own tensors are renamed (`Identity:0`).
    """
    for graph in model.meta_graphs:
        if key in graph.signature_def:
            definition = graph.signature_def[key]
            return {
                "inputs": {name: info.name for name, info in definition.inputs.items()},
                "outputs": {name: info.name for name, info in definition.outputs.items()},
            }
    return {"inputs": {}, "outputs": {}}
