"""The engine process: the one place a consumer's models are loaded and run.

It serves requests from its consumer over a pipe, one at a time: load a network, run a batch, drop a network.
A model that crashes or wedges ends (or gets killed in) this process, never the consumer, which starts another
(consumers.engines). Imported by the fork server before it forks, so TensorFlow is ready in every child.
"""

from __future__ import annotations

import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle
from pathlib import Path

import tensorflow as tf  # imported here so that the fork server preloads it

from consumers.compute import run_batch
from consumers.engine_buffer import MappedBuffer
from consumers.engine_protocol import AttachBuffer, DropNetwork, Failed, LoadNetwork, Ready, Reply, Request
from consumers.forkserver import die_with_parent, drop_settings_from_environment
from engine.errors import ModelError
from engine.model import SavedModel
from schemas.messages import ModelRef


class _Refs:
    """Parsed model references by their JSON: a model's reference repeats batch after batch."""

    _KEPT = 64

    def __init__(self) -> None:
        self._parsed: dict[bytes, ModelRef] = {}

    def parse(self, text: bytes) -> ModelRef:
        ref = self._parsed.get(text)
        if ref is None:
            if len(self._parsed) >= self._KEPT:
                self._parsed.pop(next(iter(self._parsed)))
            ref = self._parsed[text] = ModelRef.model_validate_json(text)
        return ref


class _Networks:
    def __init__(self) -> None:
        self._loaded: dict[str, SavedModel] = {}

    def load(self, network_id: str, folder: str) -> tuple[SavedModel, float]:
        model = self._loaded.get(network_id)
        if model is not None:
            return model, 0.0
        started = time.perf_counter()
        model = SavedModel.load(Path(folder))
        # One run on zeros right after loading: graph optimisation happens here, not in a first request.
        model.warm_up(1)
        self._loaded[network_id] = model
        return model, time.perf_counter() - started

    def drop(self, network_id: str) -> None:
        self._loaded.pop(network_id, None)


def _handle(networks: _Networks, refs: _Refs, buffer: MappedBuffer, request: Request) -> Reply:
    try:
        if isinstance(request, DropNetwork):
            networks.drop(request.network_id)
            return Ready(load_s=0.0)
        assert not isinstance(request, AttachBuffer)
        model, load_s = networks.load(request.network_id, request.folder)
        if isinstance(request, LoadNetwork):
            return Ready(load_s=load_s)
        parsed = [refs.parse(text) for text in request.model_refs]
        inputs = [(group.indices, buffer.view(group.array)) for group in request.inputs]
        return run_batch(model, parsed, request.items, inputs), load_s
    except ModelError as error:
        return Failed(str(error))
    except Exception as error:  # anything else is this request's failure, not the process's end
        return Failed(f"the model process failed: {error!r}"[:2000])


def serve(connection: Connection, threads: int) -> None:
    """The child's main loop; it ends when the consumer closes its end of the pipe. `threads`: TensorFlow's
    intra- and inter-op threads (0: its default), set before the first op creates its thread pools."""
    die_with_parent()
    drop_settings_from_environment()
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    # Ctrl-C in `percept serve` reaches the whole process group: the consumer decides when this one ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    networks = _Networks()
    refs = _Refs()
    buffer = MappedBuffer()
    while True:
        try:
            request = connection.recv()
            if isinstance(request, AttachBuffer):
                buffer.attach(recv_handle(connection))
                connection.send(Ready(load_s=0.0))
                continue
        except EOFError:
            return
        connection.send(_handle(networks, refs, buffer, request))
