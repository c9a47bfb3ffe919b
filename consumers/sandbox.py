"""Trial loads of uploaded networks in a child process, so a hostile or broken model ends that process, not
the consumer.

Deployment first runs the whole load here: scan, load, check the signature against the pre-processing, one
warm-up inference. The child is forked from the fork server (consumers.forkserver: TensorFlow imported,
never run, none of the consumer's memory); it limits its own memory before touching the model, and the
parent kills it when the time limit expires. Only a model that passes is loaded by the consumer itself.

The memory limit is RLIMIT_DATA, not RLIMIT_AS: TensorFlow maps over a gigabyte of address space it never
writes (library code, malloc arena reservations, thread stacks that grow with the core count), so an address
space limit must be set far above what a model uses and varies by machine. RLIMIT_DATA counts private
writable memory, which tracks what a model really allocates (measured: about 450 MB for a tiny model, 550 MB
for MobileNetV2, with TensorFlow itself included).

Far beyond the limit, a model fails at once with TensorFlow's out-of-memory error. Just at the limit, a
process may instead stall in allocation retries; the time limit then ends it, and the reason names time.
TensorFlow alone needs about 450 MB, hence the 512 MB floor of the setting (the forked child counts the
fork server's TensorFlow as its own, as a fresh process would).

What a trial proves is that the model loads and runs once on zeros within the limits; a graph whose cost
depends on the pixel values can still misbehave on a later request (the scan refuses what it can name).
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from dataclasses import dataclass
from enum import Enum
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np
import structlog
from pydantic import BaseModel

from consumers.forkserver import context, die_with_parent, drop_settings_from_environment
from schemas.networks import NetworkPostprocessing, Preprocessing
from schemas.signature import Signature

log = structlog.get_logger("sandbox")

_RESULT_MAX_BYTES = 1024 * 1024  # a signature of many tensors fits many times over
_STDERR_TAIL_BYTES = 16 * 1024  # a model may print in a loop: keep only the end, for the reason
_FREE_DIM = 32  # size given to dimensions the signature leaves open, for the one warm-up run
# What running out of memory under the limit looks like, whichever layer notices first.
_MEMORY_MARKERS = (
    "OOM when allocating",  # TensorFlow's allocator
    "bad_alloc",  # C++
    "MemoryError",  # Python
    "memory allocation of",  # Rust extensions
    "cannot allocate memory",  # strerror(ENOMEM), and glibc's "... for thread-local data" on a new thread
    "mmap error",
)
_HELD_ALREADY = "TensorFlow alone holds"


class TrialFailure(str, Enum):
    MODEL = "model"  # the child ran to the end and found the model unusable (scan, load, signature, run)
    MEMORY = "memory"  # the model needed more memory than PERCEPT_SANDBOX_MEMORY_MB
    TIME = "time"  # the child was killed at PERCEPT_SANDBOX_TIMEOUT_S
    CRASH = "crash"  # the child died without a result (a signal or an exit the model caused)


class TrialRequest(BaseModel):
    """What the parent sends on the child's stdin."""

    folder: str
    preprocessing: Preprocessing
    postprocessings: list[NetworkPostprocessing]


class TrialResult(BaseModel):
    """What the child writes on its result pipe; `error` is a sentence for the network's owner."""

    ok: bool
    signature: Signature | None = None
    failure: TrialFailure | None = None
    error: str = ""


@dataclass(frozen=True)
class SandboxLimits:
    memory_mb: int
    timeout_s: float


class Sandbox:
    """Each trial in a new child process. The deployment queue's prefetch of one keeps a consumer to one
    trial at a time, so the memory limit is also what a consumer's trials add to its host at most."""

    def __init__(self, limits: SandboxLimits) -> None:
        self._limits = limits

    async def trial(
        self, folder: Path, preprocessing: Preprocessing, postprocessings: list[NetworkPostprocessing]
    ) -> TrialResult:
        # Absolute: the child's working directory is the fork server's, and `percept serve` keeps its data in
        # the relative `data/`.
        absolute = await asyncio.to_thread(folder.resolve)
        request = TrialRequest(
            folder=str(absolute), preprocessing=preprocessing, postprocessings=postprocessings
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        forkserver = context()
        ours, theirs = forkserver.Pipe(duplex=False)
        with tempfile.NamedTemporaryFile(prefix="percept-trial-", suffix=".log") as output:
            process = forkserver.Process(
                target=_child,
                args=(theirs, self._limits.memory_mb, request, output.name),
                name="percept-trial",
                daemon=True,
            )
            # The first child of a process also starts the fork server (TensorFlow's import): not on the loop.
            await asyncio.to_thread(process.start)
            theirs.close()
            try:
                async with asyncio.timeout(self._limits.timeout_s):
                    payload = await asyncio.to_thread(_receive, ours, process)
            except TimeoutError:
                result = TrialResult(
                    ok=False,
                    failure=TrialFailure.TIME,
                    error=f"loading the model and one warm-up run did not finish within the time limit of "
                    f"{self._limits.timeout_s:g} s (PERCEPT_SANDBOX_TIMEOUT_S)",
                )
            else:
                result = self._interpret(process.exitcode, payload, _tail(Path(output.name)))
            finally:
                if process.exitcode is None:  # timed out, or the deployment was cancelled
                    process.kill()
                    await asyncio.to_thread(process.join)
                ours.close()
        log.info(
            "sandbox_trial",
            ok=result.ok,
            failure=result.failure,
            ms=round((loop.time() - started) * 1000, 1),
            exit=process.exitcode,
        )
        return result

    def _interpret(self, returncode: int | None, stdout: bytes, stderr: bytes) -> TrialResult:
        memory = f"the memory limit of {self._limits.memory_mb} MB (PERCEPT_SANDBOX_MEMORY_MB)"
        tail = stderr.decode(errors="replace")
        try:
            result = TrialResult.model_validate_json(stdout)
        except ValueError:
            result = None
        if returncode == 0 and result is not None:
            if result.failure is TrialFailure.MEMORY and result.error.startswith(_HELD_ALREADY):
                return result.model_copy(update={"error": f"{memory} is too low: {result.error}"})
            if result.failure is TrialFailure.MEMORY:
                # TensorFlow's OOM message runs to a paragraph of hints; the line naming the tensor is enough.
                detail = _last_line(result.error, _MEMORY_MARKERS)
                return result.model_copy(update={"error": f"the model exceeded {memory}: {detail}"})
            return result
        if _mentions(tail, _MEMORY_MARKERS):
            detail = _last_line(tail, _MEMORY_MARKERS)
            return TrialResult(
                ok=False, failure=TrialFailure.MEMORY, error=f"the model exceeded {memory}: {detail}"
            )
        how = (
            f"was killed by {signal.Signals(-returncode).name}"
            if returncode is not None and returncode < 0
            else f"exited with status {returncode}"
        )
        detail = _last_line(tail, ())
        return TrialResult(
            ok=False,
            failure=TrialFailure.CRASH,
            error=f"the process loading the model {how}" + (f": {detail}" if detail else ""),
        )


def _receive(connection: Connection, process: BaseProcess) -> bytes:
    """The child's result (bounded), or nothing if it died first; returns once the child has exited."""
    try:
        payload = connection.recv_bytes(_RESULT_MAX_BYTES)
    except (EOFError, OSError):
        payload = b""
    process.join()
    return payload


def _tail(output: Path) -> bytes:
    """The end of what the child printed: a model may print in a loop."""
    with output.open("rb") as file:
        file.seek(max(0, output.stat().st_size - _STDERR_TAIL_BYTES))
        return file.read()


def _mentions(text: str, markers: tuple[str, ...]) -> bool:
    """Whether `text` contains a marker, whatever the case (libraries capitalise the same message apart)."""
    folded = text.casefold()
    return any(marker.casefold() in folded for marker in markers)


def _last_line(text: str, markers: tuple[str, ...]) -> str:
    """The last non-empty line of `text` (containing a marker, when markers are given), shortened."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if markers:
        lines = [line for line in lines if _mentions(line, markers)] or lines
    return lines[-1][:300] if lines else ""


# --- The child ---------------------------------------------------------------------------------------------


def _limit_memory(memory_mb: int) -> TrialResult | None:
    """Set the limit; a failed trial at once if the process holds more already (TensorFlow alone does, under
    a limit this low: the first allocation then fails, in whichever library, and not all of them say why)."""
    import resource

    held_mb = _data_mb()
    if held_mb is not None and held_mb >= memory_mb:
        return TrialResult(
            ok=False,
            failure=TrialFailure.MEMORY,
            error=f"{_HELD_ALREADY} {held_mb} MB before any model is loaded",
        )
    limit = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash of a large process writes no core file
    return None


def _data_mb() -> int | None:
    """The private writable memory this process holds (VmData: what RLIMIT_DATA limits), in MB."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) // 1024
    return None


def _zeros(signature: Signature) -> dict[str, np.ndarray] | None:
    """A batch of one on zeros; open dimensions get a small size. None when an input is not numeric."""
    zeros = {}
    for key, spec in signature.inputs.items():
        try:
            dtype = np.dtype(spec.dtype)
        except TypeError:
            return None
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
            return None
        shape = [1, *(_FREE_DIM if dim is None else dim for dim in spec.shape[1:])]
        zeros[key] = np.zeros(shape, dtype=dtype)
    return zeros


def _out_of_memory(error: BaseException) -> bool:
    """Whether the error, or one it replaced (the engine rewords TensorFlow's), is running out of memory."""
    import tensorflow as tf

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, MemoryError | tf.errors.ResourceExhaustedError):
            return True
        if _mentions(str(seen), _MEMORY_MARKERS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _trial(request: TrialRequest) -> TrialResult:
    from engine.errors import EngineError
    from engine.model import SavedModel
    from engine.validate import validate_network

    try:
        model = SavedModel.load(Path(request.folder))  # scans before TensorFlow sees the graph
        validate_network(model.signature, request.preprocessing, request.postprocessings)
        zeros = _zeros(model.signature)
        if zeros is not None:
            model.predict(zeros)
    except MemoryError:
        return TrialResult(ok=False, failure=TrialFailure.MEMORY, error="Python ran out of memory")
    except EngineError as error:
        memory = _out_of_memory(error)
        message = str(error) + (f" ({type(error.__context__).__name__})" if memory else "")
        return TrialResult(
            ok=False, failure=TrialFailure.MEMORY if memory else TrialFailure.MODEL, error=message[:2000]
        )
    return TrialResult(ok=True, signature=model.signature)


def _child(connection: Connection, memory_mb: int, request: TrialRequest, output: str) -> None:
    """The trial, in a child forked from the fork server (consumers.forkserver)."""
    die_with_parent()
    drop_settings_from_environment()
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # a trial must not take the consumer's GPU
    # Everything TensorFlow or the model prints goes to a file, whose end may explain a death.
    printed = os.open(output, os.O_WRONLY | os.O_TRUNC)
    os.dup2(printed, 1)
    os.dup2(printed, 2)
    refused = _limit_memory(memory_mb)
    connection.send_bytes((refused or _trial(request)).model_dump_json().encode())
