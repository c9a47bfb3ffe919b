"""The consumer's side of its engine processes (consumers.engine_child): start, call, time out, replace.

`mains` run the batches, one batch each at a time: by default one process per core, each with one TensorFlow
thread (consumers.config says why). A main process that is lost is replaced at once in the background
(forked, and loaded with the networks it held): meanwhile the batches go to the other mains, so a crash costs
the consumer one process's share for a moment rather than a pause while every waiting batch loads a model.

`quarantine` runs a job alone after a batch it was in ended its process (a crash, or a stall): the culprit
shows itself there, ending that process in turn, without holding up anyone's batches. The batch-mates still
waiting for quarantine then run alone in a main process, ahead of the batches there, instead of waiting for a
fresh quarantine process: the culprit is found, and they most likely did nothing (one that did ends that main
process alone, which proves it just as well). A job's last lone run, the one that can fail it, has a process
of its own (`verdict`): it may take all of PERCEPT_MAX_RUN_S, and no first lone run waits behind it.
Quarantine and verdict start on demand and stop when idle.

Deadlines. TensorFlow cannot interrupt a kernel, so a run that wedges is ended by killing its process. A
batch, and a job's first lone run, are suspected early: after ten times what this network's slowest batch
so far took per image, times the batch's size (at least half a second, at most PERCEPT_MAX_RUN_S). A later
lone run gets the full PERCEPT_MAX_RUN_S. A wrong suspicion only costs a rerun; what fails a job is a lone
run that had all the time there is, or one that crashed its process in a way only the model can (below).
Loading a network into a fresh process is a request of its own, with the full limit: the suspicion deadline
is for the run only, so a process that was just replaced (and must load the model again, slowly on a busy
machine) is not suspected for the load.

Crashes. A process that died of SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP or SIGSYS, or exited by
itself, was ended by the code it ran: the same input does it again, so one lone run proves it
(`EngineLost.deterministic`). SIGKILL may come from outside (the kernel's out-of-memory killer, an operator)
and a stall may be a busy machine: those get the full count of lone runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
_LONE_IDLE_S = 30.0

# What a caller awaits just before its request runs (consumers.inference counts a lone run there).
Starting = Callable[[], Awaitable[None]]


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
    """One engine process, started on first use; requests one at a time. With `replace`, a lost process is
    replaced at once in the background (forked and loaded with the networks it held), off every request's
    path; otherwise the next request starts one."""

    def __init__(
        self,
        name: str,
        forkserver: ForkServerContext,
        *,
        threads: int,
        load_deadline_s: float | None,
        replace: bool = False,
    ) -> None:
        self.name = name
        self._forkserver = forkserver
        self._threads = threads
        self._load_deadline_s = load_deadline_s
        self._replace = replace
        self._current: _Process | None = None
        self._replacing: asyncio.Task[None] | None = None
        self._losses = 0
        self._lock = PriorityLock()
        self._buffer = BatchBuffer()
        # Calls block on the pipe: each slot has its own thread for them (and for writing batches).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")

    @property
    def running(self) -> bool:
        return self._current is not None

    @property
    def replacing(self) -> bool:
        """A lost process's replacement is being started."""
        return self._replacing is not None

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

    async def call(
        self,
        request: Request | Batch,
        *,
        deadline_s: float | None,
        priority: int = 0,
        unless_lost: bool = False,
        starting: Starting | None = None,
    ) -> Reply | None:
        """Calls waiting for the process go in order of `priority` (lower first), then of arrival. A batch for
        a network this process has not loaded loads it first, within `load_deadline_s`, not `deadline_s`.
        With `unless_lost`, None if a process this call waited for was lost meanwhile (by a call ahead).
        `starting` is awaited once the process is ready to run the request, just before it does."""
        losses = self._losses
        async with self._lock.first(priority):
            if unless_lost and self._losses != losses:
                return None
            current = await self._ensure()
            if isinstance(request, Batch) and request.network_id not in current.networks:
                load = LoadNetwork(request.network_id, request.folder)
                loaded = await self._exchange(current, load, self._load_deadline_s)
                if isinstance(loaded, Failed):
                    return loaded
            if starting is not None:
                await starting()
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
            if self._replacing is not None:
                await asyncio.shield(self._replacing)
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
        if self._current is None and self._replacing is not None:
            await asyncio.shield(self._replacing)  # it failed if it left no process
        if self._current is None:
            # The first start in a process starts the fork server (TensorFlow's import): off the loop.
            loop = asyncio.get_running_loop()
            self._current = await loop.run_in_executor(
                self._thread, _spawn, self._forkserver, self.name, self._threads
            )
            log.info("engine_started", engine=self.name, pid=self._current.process.pid, replacement=False)
        return self._current

    def _forget(self, current: _Process, *, reason: str) -> None:
        if self._current is current:
            self._current = None
        current.connection.close()
        self._losses += 1
        metrics.ENGINE_RESTARTS.labels(reason).inc()
        log.warning("engine_lost", engine=self.name, pid=current.process.pid, reason=reason)
        if self._replace and self._replacing is None:
            # In a context of its own: the replacement serves no job (logs would name the lost batch's).
            replacement = self._replacement(dict(current.networks))
            loop = asyncio.get_running_loop()
            self._replacing = loop.create_task(replacement, context=contextvars.Context())

    async def _replacement(self, networks: dict[str, str]) -> None:
        """Fork and load a process in place of a lost one; meanwhile requests go to other slots."""
        loop = asyncio.get_running_loop()
        try:
            current = await loop.run_in_executor(
                self._thread,
                _prepared,
                self._forkserver,
                self.name,
                self._threads,
                networks,
                self._load_deadline_s,
            )
            if current is not None:
                self._current = current
                log.info("engine_started", engine=self.name, pid=current.process.pid, replacement=True)
        finally:
            self._replacing = None


def _spawn(forkserver: ForkServerContext, name: str, threads: int) -> _Process:
    ours, theirs = forkserver.Pipe()
    process = forkserver.Process(
        target=_serve, args=(theirs, threads), name=f"percept-engine-{name}", daemon=True
    )
    process.start()
    theirs.close()
    return _Process(process, ours)


def _prepared(
    forkserver: ForkServerContext,
    name: str,
    threads: int,
    networks: dict[str, str],
    load_deadline_s: float | None,
) -> _Process | None:
    """Fork and load `networks` (id: folder); None if the process failed to."""
    try:
        current = _spawn(forkserver, name, threads)
    except OSError as error:  # no process to fork (memory, process limits): the next request tries again
        log.warning("engine_replacement_failed", engine=name, reason=str(error))
        return None
    try:
        for network_id, folder in networks.items():
            current.connection.send(LoadNetwork(network_id, folder))
            if not current.connection.poll(load_deadline_s):
                raise EngineLost("the load ran out of time")
            if not isinstance(current.connection.recv(), Failed):
                current.networks[network_id] = folder
    except (EngineLost, EOFError, OSError) as error:
        log.warning("engine_replacement_failed", engine=name, reason=str(error))
        current.process.kill()
        current.connection.close()
        _join(current.process)
        return None
    return current


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
        self.mains = [
            EngineSlot(
                f"main-{index}",
                forkserver,
                threads=threads,
                load_deadline_s=self._load_deadline_s,
                replace=True,
            )
            for index in range(processes)
        ]
        self.quarantine = EngineSlot(
            "quarantine", forkserver, threads=threads, load_deadline_s=self._load_deadline_s
        )
        self.verdict = EngineSlot(
            "verdict", forkserver, threads=threads, load_deadline_s=self._load_deadline_s
        )
        self._per_image_s: dict[str, float] = {}  # the slowest batch so far, per image, per network
        self._idle: dict[EngineSlot, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def processes(self) -> int:
        """Batches that can run at once."""
        return len(self.mains)

    async def start(self) -> None:
        await asyncio.gather(*(slot.start() for slot in self.mains))

    async def stop(self) -> None:
        for idle in self._idle.values():
            idle.cancel()
        await asyncio.gather(*(slot.close() for slot in [*self.mains, self.quarantine, self.verdict]))

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
        self,
        network: LoadedNetwork,
        batch: Sequence[PreparedJob],
        *,
        alone: bool,
        full_time: bool = False,
        starting: Starting | None = None,
    ) -> BatchRun:
        """Results in input order; raises EngineLost when the process ended before answering. `alone`: a
        job's lone run, in quarantine (or a main process, when quarantine's is lost while it waits); with
        `full_time`, its last one, in the verdict process with all of PERCEPT_MAX_RUN_S instead of the
        suspicion deadline. `starting` is awaited once a process is ready to run the batch, just before."""
        # The job (image bytes included) stays here: the inputs go through the slot's buffer, the model
        # reference down the pipe once.
        refs: dict[bytes, int] = {}  # one, unless a version changed while its jobs were batched
        items = [RunItem.of(item, refs.setdefault(model_json(item.job.model), len(refs))) for item in batch]
        groups = [
            (group, [batch[index].example for index in group])
            for group in group_by_shape([item.example for item in batch])
        ]
        request = Batch(network.network_id, str(network.folder), list(refs), items, groups)
        deadline_s = self._suspect_after(network.network_id, len(batch))
        reply: Reply | None
        if alone and full_time:
            self._keep_until_idle(self.verdict)
            reply = await self.verdict.call(request, deadline_s=self._max_run_s, starting=starting)
        elif alone:
            # Its process lost while it waited (a culprit ahead showed itself), it goes on in a main process.
            self._keep_until_idle(self.quarantine)
            reply = await self.quarantine.call(
                request, deadline_s=deadline_s, unless_lost=True, starting=starting
            )
            while reply is None:
                slot = self._main_for(network.network_id)
                reply = await slot.call(
                    request, deadline_s=deadline_s, priority=-1, unless_lost=True, starting=starting
                )
        else:
            slot = self._main_for(network.network_id)
            reply = await slot.call(request, deadline_s=deadline_s, starting=starting)
        assert reply is not None
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
        """The main process with the fewest calls running or waiting, one holding the network among equals,
        and not one being replaced while another runs. The caller takes its place before yielding to the loop
        (EngineSlot.call locks at once when free), so two batches started together never pick the same free
        process."""
        return min(self.mains, key=lambda slot: (slot.replacing, slot.queued, not slot.holds(network_id)))

    def drop(self, network_id: str) -> None:
        """Forget a network everywhere (evicted, deleted or redeployed): its next use loads it again."""
        self._per_image_s.pop(network_id, None)
        for slot in [*self.mains, self.quarantine, self.verdict]:
            if slot.running or slot.replacing:
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

    def _keep_until_idle(self, slot: EngineSlot) -> None:
        """A lone-run process holds a model nobody else is using: it goes once its runs stop coming."""
        if slot in self._idle:
            self._idle[slot].cancel()
        self._idle[slot] = asyncio.get_running_loop().call_later(_LONE_IDLE_S, self._stop, slot)

    def _stop(self, slot: EngineSlot) -> None:
        stopping = asyncio.get_running_loop().create_task(slot.stop_process())
        self._background.add(stopping)
        stopping.add_done_callback(self._background.discard)


async def _drop(slot: EngineSlot, network_id: str) -> None:
    with contextlib.suppress(EngineLost):
        await slot.call(DropNetwork(network_id), deadline_s=None)
