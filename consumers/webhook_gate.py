"""Per-endpoint fairness for webhook attempts: an in-flight cap and a circuit breaker, kept in one process.

The webhook consumer has `webhook_prefetch` slots, and an attempt to a receiver that never answers holds one
for the whole timeout. Without a cap, a burst of events for one dead receiver fills every slot and every other
receiver waits behind its timeouts. So an endpoint holds at most `max_in_flight` slots; a delivery over the
cap goes back to the queue with a delay instead (the caller republishes it: it is not an attempt, so nothing
is recorded and its attempt number stays). Deferred deliveries are spaced after those already waiting, at the
pace the endpoint takes them, so a backlog of thousands comes back a few at a time, not all at once.

An endpoint whose attempts end without an answer `failures` times in a row is cut off (the circuit opens)
for `open_s`, doubled after every failed probe up to MAX_OPEN_S: its deliveries wait in the delay queues
meanwhile, holding no slot. Once that time is up, one attempt at a time probes it; any answer closes the
circuit.

With N consumer processes an endpoint may hold N x max_in_flight slots over the fleet, and each process
learns on its own that an endpoint is dead: sharing this through the store would cost writes per attempt.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("webhooks")

MIN_DEFER_S = 0.1  # the shortest delay step of the broker's delay queues (broker.topology.DELAY_STEPS_MS)
MAX_DEFER_S = 900.0  # a deferred delivery is looked at again at least this often
MAX_OPEN_S = 600.0  # longest cut-off of a dead endpoint, unless the configured first one is longer
_PACE_WEIGHT = 0.3  # of the newest attempt in the moving average of an endpoint's attempt durations
_JITTER = 0.2  # deferrals spread over +20%, so deliveries deferred together do not come back together
_IDLE_S = 600.0  # state of an endpoint unused this long, with nothing in flight or open, is forgotten
_PRUNE_EVERY = 256  # admissions between two looks for forgettable state


@dataclass(frozen=True)
class Deferral:
    """Not now: put the delivery back on the queue for `delay_s`."""

    delay_s: float
    reason: str


@dataclass(frozen=True)
class Ticket:
    """An admitted attempt; hand it back to `EndpointGate.release` when the attempt ends."""

    key: str
    number: int
    started: float


@dataclass
class _Endpoint:
    pace_s: float  # moving average of how long an attempt takes
    in_flight: dict[int, float] = field(default_factory=dict)  # ticket number -> start, for the oldest's age
    waiting: list[float] = field(default_factory=list)  # heap of when deferred deliveries are due
    failures: int = 0  # attempts in a row that ended without an answer
    open_until: float = 0.0
    open_s: float = 0.0  # the last cut-off; 0 while the circuit is closed
    last_used: float = 0.0


class EndpointGate:
    def __init__(
        self,
        *,
        max_in_flight: int,
        failures: int,
        open_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`failures` 0: the circuit never opens."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._max_in_flight = max_in_flight
        self._failures = failures
        self._open_s = open_s
        self._max_open_s = max(open_s, MAX_OPEN_S)
        self._clock = clock
        self._endpoints: dict[str, _Endpoint] = {}
        self._admissions = 0
        self._numbers = itertools.count()

    def acquire(self, key: str) -> Ticket | Deferral:
        now = self._clock()
        self._admissions += 1
        if self._admissions % _PRUNE_EVERY == 0:
            self._prune(now)
        state = self._endpoints.get(key)
        if state is None:
            state = self._endpoints[key] = _Endpoint(pace_s=MIN_DEFER_S)
        state.last_used = now
        _forget_due(state, now)
        if state.open_until > now:
            return self._defer(state, now, start=state.open_until, reason="circuit open")
        if len(state.in_flight) >= self._cap(state):
            return self._defer(state, now, start=now, reason="endpoint at its in-flight cap")
        ticket = Ticket(key, next(self._numbers), now)
        state.in_flight[ticket.number] = now
        return ticket

    def release(self, ticket: Ticket, *, answered: bool | None) -> None:
        """`answered`: whether the receiver answered (any status); None when no request was sent."""
        state = self._endpoints.get(ticket.key)
        if state is None or state.in_flight.pop(ticket.number, None) is None:
            return
        now = self._clock()
        if answered is None:
            return
        took = now - ticket.started
        state.pace_s = (1 - _PACE_WEIGHT) * state.pace_s + _PACE_WEIGHT * took
        if answered:
            if state.open_s:
                log.info("webhook_circuit_closed", endpoint=ticket.key)
            state.failures, state.open_until, state.open_s = 0, 0.0, 0.0
            return
        state.failures += 1
        if self._failures and state.failures >= self._failures and state.open_until <= now:
            # First cut-off, or a failed probe: each one twice as long as the last.
            state.open_s = min(state.open_s * 2, self._max_open_s) if state.open_s else self._open_s
            state.open_until = now + state.open_s
            log.warning(
                "webhook_circuit_opened", endpoint=ticket.key, failures=state.failures, open_s=state.open_s
            )

    def _cap(self, state: _Endpoint) -> int:
        return 1 if state.open_s else self._max_in_flight  # one probe at a time after a cut-off

    def _defer(self, state: _Endpoint, now: float, *, start: float, reason: str) -> Deferral:
        # The endpoint starts about `cap` attempts per attempt-duration; those already waiting go first.
        oldest = min(state.in_flight.values(), default=now)
        pace = max(state.pace_s, now - oldest, MIN_DEFER_S)
        rounds = len(state.waiting) // self._cap(state) + 1
        delay = (start - now) + pace * rounds * random.uniform(1, 1 + _JITTER)
        delay = min(max(delay, MIN_DEFER_S), MAX_DEFER_S)
        heapq.heappush(state.waiting, now + delay)
        return Deferral(delay, reason)

    def _prune(self, now: float) -> None:
        for key, state in list(self._endpoints.items()):
            _forget_due(state, now)
            idle = not state.in_flight and not state.waiting and state.open_until <= now
            if idle and now - state.last_used > _IDLE_S:
                del self._endpoints[key]


def _forget_due(state: _Endpoint, now: float) -> None:
    """Deferred deliveries whose time has come are back in the queue, no longer waiting behind the others."""
    while state.waiting and state.waiting[0] <= now:
        heapq.heappop(state.waiting)
