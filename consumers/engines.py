"""The consumer's side of its engine processes (consumers.engine_child): start, call, time out, replace.

`mains` run the batches, one batch each at a time: by default one process per core, each with one TensorFlow
thread (consumers.config says why). `quarantine` runs a job alone after a batch it was in ended its process (a
crash, or a stall): the culprit shows itself there without holding up the batches of everyone else, who go on
in a fresh main process. Quarantine starts on demand and stops when idle.

Deadlines. TensorFlow cannot interrupt a kernel, so a run that wedges is ended by killing its process. A
batch, and a job's first lone run, are suspected early: after ten times what this network's slowest batch
so far took per image, times the batch's size (at least half a second, at most PERCEPT_MAX_RUN_S). A later
lone run gets the full PERCEPT_MAX_RUN_S. A wrong suspicion only costs a rerun; what fails a job is a lone
run that had all the time there is, or one that crashed its process in a way only the model can (below).
Quarantine serves first lone runs before later ones, so the jobs that merely shared a batch with a culprit
are not kept waiting behind its long last run. Loading a network into a fresh process is a request of its
own, with the full limit: the suspicion deadline is for the run only, so a process that was just replaced
(and must load the model again, slowly on a busy machine) is not suspected for the load.

Crashes. A process that died of SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP or SIGSYS, or exited by
itself, was ended by the code it ran: the same input does it again, so one lone run proves it
(`EngineLost.deterministic`). SIGKILL may come from outside (the kernel's out-of-memory killer, an operator)
and a stall may be a busy machine: those get the full count of lone runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import signal
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, ForkServerProcess
from multiprocessing.reduction import send_handle

import numpy as np
import structlog

from consumers import metrics
from consumers.compute import BatchRun, PreparedJob, RunItem
from consumers.engine_buffer import BatchBuffer
from consumers.engine_protocol import (
    AttachBuffer,
    DropNetwork,
    Failed,
    InputGroup,
    LoadNetwork,
    Ready,
    Reply,
    Request,
    RunBatch,
)
from consumers.forkserver import context
from consumers.models import LoadedNetwork
from engine.errors import ModelError
from engine.preprocess import group_by_shape
from schemas.job_wire import model_json

log = structlog.get_logger("engines")

_SUSPECT_FACTOR = 10.0
_SUSPECT_FLOOR_S = 0.5
_QUARANTINE_IDLE_S = 30.0
_SPARE_IDLE_S = 30.0


# Signals a process raises on itself: a failed CHECK or assert (abort), a bad memory access, an arithmetic
# trap, an illegal instruction, a refused system call.
_SELF_INFLICTED = frozenset(
    {
        signal.SIGABRT,
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
        signal.SIGTRAP,
        signal.SIGSYS,
    }
)


class EngineLost(Exception):
    """The process running a request crashed or was killed at its deadline; the request has no result.
    `deterministic`: the process ended itself (see the module's docstring), so the input will do it again."""

    def __init__(self, message: str, *, deterministic: bool = False) -> None:
        super().__init__(message)
        self.deterministic = deterministic


@dataclass
class _Process:
    process: ForkServerProcess
    connection: Connection
    networks: dict[str, str] = field(default_factory=dict)  # loaded here (id: folder), as replies tell
    buffer_generation: int = 0  # of its slot's batch buffer it has mapped (0: none)


@dataclass(frozen=True)
class Batch:
    """A batch for a slot: its inputs, grouped by shape, are placed in the slot's buffer as it is sent."""

    network_id: str
    folder: str
    model_refs: list[bytes]
    items: list[RunItem]
    groups: list[tuple[list[int], list[np.ndarray]]]  # indices in `items`, and their inputs


class PriorityLock:
    """A lock granted to the waiter with the lowest priority number, first come first served among equals."""

    def __init__(self) -> None:
        self._held = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def first(self, priority: int) -> AsyncIterator[None]:
        if self._held or self._waiters:
            granted = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (priority, next(self._arrivals), granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # granted just as we were cancelled: pass it on
                else:
                    self._waiters = [entry for entry in self._waiters if entry[2] is not granted]
                    heapq.heapify(self._waiters)
                raise
        else:
            self._held = True
        try:
            yield
        finally:
            self._release()

    @property
    def queued(self) -> int:
        """The holder, if any, and the waiters."""
        return int(self._held) + len(self._waiters)

    def _release(self) -> None:
        while self._waiters:
            _, _, granted = heapq.heappop(self._waiters)
            if not granted.done():
                granted.set_result(None)  # ownership passes straight on: _held stays True
                return
        self._held = False


class EngineSlot:
    """One engine process, started on first use and replaced after it is lost; requests one at a time."""

    def __init__(
        self,
        name: str,
        forkserver: ForkServerContext,
        *,
        threads: int,
        load_deadline_s: float | None,
        spare: Spare | None = None,
    ) -> None:
        self.name = name
        self._forkserver = forkserver
        self._threads = threads
        self._load_deadline_s = load_deadline_s
        self._spare = spare
        self._current: _Process | None = None
        self._lock = PriorityLock()
        self._buffer = BatchBuffer()
        # Calls block on the pipe: each slot has its own thread for them (and for writing batches).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")

    @property
    def running(self) -> bool:
        return self._current is not None

    @property
    def pid(self) -> int | None:
        return self._current.process.pid if self._current is not None else None

    @property
    def queued(self) -> int:
        """Calls running or waiting here."""
        return self._lock.queued

    def holds(self, network_id: str) -> bool:
        return self._current is not None and network_id in self._current.networks

    async def start(self) -> None:
        async with self._lock.first(0):
            await self._ensure()

    async def call(self, request: Request | Batch, *, deadline_s: float | None, priority: int = 0) -> Reply:
        """Calls waiting for the process go in order of `priority` (lower first), then of arrival. A batch for
        a network this process has not loaded loads it first, within `load_deadline_s`, not `deadline_s`."""
        async with self._lock.first(priority):
            current = await self._ensure()
            if isinstance(request, Batch) and request.network_id not in current.networks:
                load = LoadNetwork(request.network_id, request.folder)
                loaded = await self._exchange(current, load, self._load_deadline_s)
                if isinstance(loaded, Failed):
                    return loaded
            return await self._exchange(current, request, deadline_s)

    async def _exchange(self, current: _Process, request: Request | Batch, deadline_s: float | None) -> Reply:
        loop = asyncio.get_running_loop()
        exchange = loop.run_in_executor(self._thread, self._send, current, request)
        try:
            reply = await asyncio.wait_for(asyncio.shield(exchange), timeout=deadline_s)
        except TimeoutError:
            current.process.kill()  # the blocked exchange then ends with EngineLost
            with contextlib.suppress(EngineLost):
                await exchange
            self._forget(current, reason="stalled")
            raise EngineLost(f"the model ran longer than {deadline_s:.3g} s") from None
        except EngineLost:
            code = await loop.run_in_executor(self._thread, _exit_code, current.process)
            self._forget(current, reason="crashed")
            raise EngineLost(
                f"the model's process {_describe(code)}", deterministic=_self_inflicted(code)
            ) from None
        if isinstance(reply, Ready) and reply.load_s:
            metrics.MODEL_LOAD_SECONDS.observe(reply.load_s)
        _note_networks(current, request, reply)
        return reply

    def _send(self, current: _Process, request: Request | Batch) -> Reply:
        """In the slot's thread: a batch's inputs go into the buffer (mapped by the process first, if it has
        not mapped this one yet), the rest of the request down the pipe."""
        if isinstance(request, Batch):
            places = self._buffer.write([inputs for _, inputs in request.groups])
            if current.buffer_generation != self._buffer.generation:
                _attach(current, self._buffer.fd)
                current.buffer_generation = self._buffer.generation
            groups = [
                InputGroup(indices, place) for (indices, _), place in zip(request.groups, places, strict=True)
            ]
            request = RunBatch(request.network_id, request.folder, request.model_refs, request.items, groups)
        return _exchange(current.connection, request)

    async def stop_process(self) -> None:
        """End the process (it is started again on next use)."""
        async with self._lock.first(0):
            if self._current is not None:
                current = self._current
                self._current = None
                current.connection.close()  # the child's loop ends at the end of its pipe
                await asyncio.get_running_loop().run_in_executor(self._thread, _join, current.process)

    async def close(self) -> None:
        await self.stop_process()
        self._thread.shutdown(wait=True)
        self._buffer.close()

    async def _ensure(self) -> _Process:
        if self._current is None:
            spare = await self._spare.take() if self._spare is not None else None
            if spare is not None:
                self._current = spare
            else:
                # The first start in a process starts the fork server (TensorFlow's import): off the loop.
                loop = asyncio.get_running_loop()
                self._current = await loop.run_in_executor(
                    self._thread, _spawn, self._forkserver, self.name, self._threads
                )
            log.info(
                "engine_started", engine=self.name, pid=self._current.process.pid, spare=spare is not None
            )
        return self._current

    def _forget(self, current: _Process, *, reason: str) -> None:
        if self._current is current:
            self._current = None
        current.connection.close()
        metrics.ENGINE_RESTARTS.labels(reason).inc()
        log.warning("engine_lost", engine=self.name, pid=current.process.pid, reason=reason)
        if self._spare is not None:
            self._spare.want(current.networks)


class Spare:
    """An engine process forked and loaded ahead of need, once a process has been lost: the next slot that
    loses its process takes it, instead of forking and loading the model while every batch waits (the load
    takes far longer than a run of a small model, and longer still on a machine busy with the poison's
    aftermath). It holds the networks of the processes lost lately. Poison comes in bursts: after a take, the
    next spare is prepared at once, and none is kept once losses stop for _SPARE_IDLE_S.
    """

    def __init__(self, forkserver: ForkServerContext, *, threads: int, load_deadline_s: float | None) -> None:
        self._forkserver = forkserver
        self._threads = threads
        self._load_deadline_s = load_deadline_s
        self._networks: dict[str, str] = {}  # what a spare loads (id: folder)
        self._preparing: asyncio.Future[_Process | None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-spare")

    def want(self, networks: dict[str, str]) -> None:
        """A process was lost (holding `networks`): have a spare ready."""
        self._networks.update(networks)
        loop = asyncio.get_running_loop()
        if self._idle is not None:
            self._idle.cancel()
        self._idle = loop.call_later(_SPARE_IDLE_S, self._retire)
        if self._preparing is None and self._networks:
            self._prepare()

    async def take(self) -> _Process | None:
        """The spare (waiting for it if it is being prepared: sooner than a fresh one), or None."""
        preparing, self._preparing = self._preparing, None
        if preparing is None:
            return None
        process = await asyncio.shield(preparing)
        if self._networks:
            self._prepare()  # the next loss of the burst takes this one
        if process is not None and not process.process.is_alive():
            return None
        return process

    async def ready_pid(self) -> int | None:
        """The prepared spare's process id, once prepared (None when there is none): for tests."""
        preparing = self._preparing
        current = await asyncio.shield(preparing) if preparing is not None else None
        return current.process.pid if current is not None else None

    def forget(self, network_id: str) -> None:
        """The network changed or went: a spare holding it drops it."""
        self._networks.pop(network_id, None)
        if self._preparing is not None:
            self._preparing = asyncio.ensure_future(self._dropping(self._preparing, network_id))

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._networks.clear()
        await self._retire_now()
        self._thread.shutdown(wait=False)

    def _prepare(self) -> None:
        networks = dict(self._networks)
        loop = asyncio.get_running_loop()
        self._preparing = loop.run_in_executor(self._thread, self._prepared, networks)

    def _prepared(self, networks: dict[str, str]) -> _Process | None:
        """In the spare's thread: fork, load; None if the process failed to."""
        current = _spawn(self._forkserver, "spare", self._threads)
        try:
            for network_id, folder in networks.items():
                current.connection.send(LoadNetwork(network_id, folder))
                if not current.connection.poll(self._load_deadline_s):
                    raise EngineLost("the spare's load ran out of time")
                if not isinstance(current.connection.recv(), Failed):
                    current.networks[network_id] = folder
        except (EngineLost, EOFError, OSError) as error:
            log.warning("spare_failed", reason=str(error))
            current.process.kill()
            current.connection.close()
            _join(current.process)
            return None
        return current

    async def _dropping(self, preparing: asyncio.Future[_Process | None], network_id: str) -> _Process | None:
        current = await preparing
        if current is None or network_id not in current.networks:
            return current
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, _exchange, current.connection, DropNetwork(network_id))
        except EngineLost:
            return None
        current.networks.pop(network_id, None)
        return current

    def _retire(self) -> None:
        self._networks.clear()
        retiring = asyncio.ensure_future(self._retire_now())
        _BACKGROUND.add(retiring)
        retiring.add_done_callback(_BACKGROUND.discard)

    async def _retire_now(self) -> None:
        preparing, self._preparing = self._preparing, None
        current = await preparing if preparing is not None else None
        if current is not None:
            current.connection.close()  # the child's loop ends at the end of its pipe
            await asyncio.get_running_loop().run_in_executor(self._thread, _join, current.process)


_BACKGROUND: set[asyncio.Future[None]] = set()  # the loop keeps only weak references to tasks


def _spawn(forkserver: ForkServerContext, name: str, threads: int) -> _Process:
    ours, theirs = forkserver.Pipe()
    process = forkserver.Process(
        target=_serve, args=(theirs, threads), name=f"percept-engine-{name}", daemon=True
    )
    process.start()
    theirs.close()
    return _Process(process, ours)


def _serve(connection: Connection, threads: int) -> None:
    """The child's entry point, named here so that the consumer never imports the child's module (and
    TensorFlow with it); in the child, forked from the fork server, that import is already done."""
    from consumers.engine_child import serve

    serve(connection, threads)


def _exchange(connection: Connection, request: Request) -> Reply:
    try:
        connection.send(request)
        reply: Reply = connection.recv()
    except (EOFError, OSError) as error:  # OSError: the pipe was closed under us by a kill
        raise EngineLost(str(error)) from None
    return reply


def _attach(current: _Process, fd: int) -> None:
    try:
        current.connection.send(AttachBuffer())
        send_handle(current.connection, fd, current.process.pid)
        current.connection.recv()
    except (EOFError, OSError) as error:
        raise EngineLost(str(error)) from None


def _exit_code(process: ForkServerProcess) -> int | None:
    process.join(timeout=5)
    return process.exitcode


def _join(process: ForkServerProcess) -> None:
    process.join(timeout=10)
    if process.is_alive():
        process.kill()
        process.join()


def _note_networks(current: _Process, request: Request | Batch, reply: Reply) -> None:
    if isinstance(request, DropNetwork):
        current.networks.pop(request.network_id, None)
    elif isinstance(request, LoadNetwork | RunBatch | Batch) and not isinstance(reply, Failed):
        current.networks[request.network_id] = request.folder


def _self_inflicted(code: int | None) -> bool:
    """Whether an exit code says the process ended itself (an exit of its own, or a signal of its own)."""
    if code is None:
        return False
    return code >= 0 or -code in _SELF_INFLICTED


def _describe(code: int | None) -> str:
    if code is None:
        return "ended"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class Engines:
    def __init__(
        self,
        *,
        max_run_s: float,
        load_timeout_s: float = 0.0,
        processes: int = 1,
        threads: int = 1,
        forkserver: ForkServerContext | None = None,
    ) -> None:
        """`load_timeout_s`: what a network's load may take (the deployment trial's limit, which the load
        met once already), when longer than `max_run_s`; 0: `max_run_s`. `processes`: main engine processes;
        `threads`: TensorFlow threads in each (0: TensorFlow's default)."""
        forkserver = forkserver or context()
        self._max_run_s = max_run_s or None
        self._load_deadline_s = max(self._max_run_s, load_timeout_s) if self._max_run_s is not None else None
        self.spare = Spare(forkserver, threads=threads, load_deadline_s=self._load_deadline_s)
        self.mains = [
            EngineSlot(
                f"main-{index}",
                forkserver,
                threads=threads,
                load_deadline_s=self._load_deadline_s,
                spare=self.spare,
            )
            for index in range(processes)
        ]
        self.quarantine = EngineSlot(
            "quarantine", forkserver, threads=threads, load_deadline_s=self._load_deadline_s, spare=self.spare
        )
        self._per_image_s: dict[str, float] = {}  # the slowest batch so far, per image, per network
        self._quarantine_idle: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def processes(self) -> int:
        """Batches that can run at once."""
        return len(self.mains)

    async def start(self) -> None:
        await asyncio.gather(*(slot.start() for slot in self.mains))

    async def stop(self) -> None:
        if self._quarantine_idle is not None:
            self._quarantine_idle.cancel()
        await asyncio.gather(
            *(slot.close() for slot in self.mains), self.quarantine.close(), self.spare.close()
        )

    async def load(self, network: LoadedNetwork) -> None:
        """Load a network into every main process now (a deployment warms the model it has just checked)."""
        request = LoadNetwork(network.network_id, str(network.folder))
        replies = await asyncio.gather(
            *(slot.call(request, deadline_s=self._load_deadline_s) for slot in self.mains)
        )
        for reply in replies:
            if isinstance(reply, Failed):
                raise ModelError(reply.error)

    async def run(
        self, network: LoadedNetwork, batch: Sequence[PreparedJob], *, alone: bool, full_time: bool = False
    ) -> BatchRun:
        """Results in input order; raises EngineLost when the process ended before answering. `full_time`
        gives the run all of PERCEPT_MAX_RUN_S instead of the suspicion deadline."""
        # The job (image bytes included) stays here: the inputs go through the slot's buffer, the model
        # reference down the pipe once.
        refs: dict[bytes, int] = {}  # one, unless a version changed while its jobs were batched
        items = [RunItem.of(item, refs.setdefault(model_json(item.job.model), len(refs))) for item in batch]
        groups = [
            (group, [batch[index].example for index in group])
            for group in group_by_shape([item.example for item in batch])
        ]
        request = Batch(network.network_id, str(network.folder), list(refs), items, groups)
        if alone:
            self._keep_quarantine()
            slot = self.quarantine
            # First lone runs go first and are suspected early; the run that can fail a job has all the time.
            deadline_s = self._max_run_s if full_time else self._suspect_after(network.network_id, 1)
            priority = 1 if full_time else 0
        else:
            slot = self._main_for(network.network_id)
            deadline_s = self._suspect_after(network.network_id, len(batch))
            priority = 0
        reply = await slot.call(request, deadline_s=deadline_s, priority=priority)
        if isinstance(reply, Failed):
            return BatchRun(results=[ModelError(reply.error)] * len(batch), predict_s=0.0, postprocess_s=0.0)
        assert not isinstance(reply, Ready)
        run, load_s = reply
        if load_s:
            metrics.MODEL_LOAD_SECONDS.observe(load_s)
        per_image = (run.predict_s + run.postprocess_s) / len(batch)
        self._per_image_s[network.network_id] = max(per_image, self._per_image_s.get(network.network_id, 0.0))
        return run

    def _main_for(self, network_id: str) -> EngineSlot:
        """The main process with the fewest calls running or waiting, one holding the network among equals.
        The caller takes its place before yielding to the loop (EngineSlot.call locks at once when free), so
        two batches started together never pick the same free process."""
        return min(self.mains, key=lambda slot: (slot.queued, not slot.holds(network_id)))

    def drop(self, network_id: str) -> None:
        """Forget a network everywhere (evicted, deleted or redeployed): its next use loads it again."""
        self._per_image_s.pop(network_id, None)
        self.spare.forget(network_id)
        for slot in [*self.mains, self.quarantine]:
            if slot.running:
                dropping = asyncio.get_running_loop().create_task(_drop(slot, network_id))
                self._background.add(dropping)  # the loop keeps only weak references to tasks
                dropping.add_done_callback(self._background.discard)

    def _suspect_after(self, network_id: str, size: int) -> float | None:
        if self._max_run_s is None:
            return None
        per_image = self._per_image_s.get(network_id)
        if per_image is None:  # nothing measured yet: only the hard limit
            return self._max_run_s
        return min(self._max_run_s, max(_SUSPECT_FLOOR_S, _SUSPECT_FACTOR * per_image * size))

    def _keep_quarantine(self) -> None:
        """The quarantine process holds a model nobody else is using: it goes once lone runs stop coming."""
        if self._quarantine_idle is not None:
            self._quarantine_idle.cancel()
        loop = asyncio.get_running_loop()
        self._quarantine_idle = loop.call_later(_QUARANTINE_IDLE_S, self._stop_quarantine)

    def _stop_quarantine(self) -> None:
        stopping = asyncio.get_running_loop().create_task(self.quarantine.stop_process())
        self._background.add(stopping)
        stopping.add_done_callback(self._background.discard)


async def _drop(slot: EngineSlot, network_id: str) -> None:
    with contextlib.suppress(EngineLost):
        await slot.call(DropNetwork(network_id), deadline_s=None)
