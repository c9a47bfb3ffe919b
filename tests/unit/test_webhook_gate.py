"""The webhook gate's cap, deferral spacing and circuit breaker, on a fake clock."""

from __future__ import annotations

import pytest

from consumers.webhook_gate import MAX_DEFER_S, MIN_DEFER_S, Deferral, EndpointGate, Ticket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _gate(clock: Clock, *, cap: int = 2, failures: int = 3, open_s: float = 10.0) -> EndpointGate:
    return EndpointGate(max_in_flight=cap, failures=failures, open_s=open_s, clock=clock)


def _ticket(outcome: Ticket | Deferral) -> Ticket:
    assert isinstance(outcome, Ticket), outcome
    return outcome


def _deferral(outcome: Ticket | Deferral) -> Deferral:
    assert isinstance(outcome, Deferral), outcome
    return outcome


def test_an_endpoint_at_its_cap_is_deferred_and_others_are_not() -> None:
    clock = Clock()
    gate = _gate(clock)
    held = [_ticket(gate.acquire("slow")) for _ in range(2)]
    deferral = _deferral(gate.acquire("slow"))
    assert deferral.reason == "endpoint at its in-flight cap"
    assert MIN_DEFER_S <= deferral.delay_s <= MAX_DEFER_S
    for _ in range(10):  # another endpoint has its own share
        gate.release(_ticket(gate.acquire("fast")), answered=True)
    gate.release(held[0], answered=True)
    _ticket(gate.acquire("slow"))  # a slot of its share is free again
    _deferral(gate.acquire("slow"))


def test_deferrals_queue_behind_each_other_at_the_endpoints_pace() -> None:
    clock = Clock()
    gate = _gate(clock, cap=2, failures=0)
    for _ in range(3):  # attempts that take 4 s each set the pace
        ticket = _ticket(gate.acquire("slow"))
        clock.now += 4.0
        gate.release(ticket, answered=True)
    pace = 0.1 * 0.7**3 + 4.0 * (1 - 0.7**3)  # the moving average from its starting value
    for _ in range(2):
        _ticket(gate.acquire("slow"))
    delays = [_deferral(gate.acquire("slow")).delay_s for _ in range(8)]
    # Two deliveries per round (the cap); each round one pace later, give or take the jitter of +20%.
    for index, delay in enumerate(delays):
        rounds = index // 2 + 1
        assert pace * rounds - 1e-9 <= delay <= pace * rounds * 1.2 + 1e-9, (index, delay)
    # Once their time has come they no longer wait ahead: the next one is in the first round, whose pace is
    # now the age of the attempts still in flight (started at 1012), longer than the average.
    clock.now += max(delays) + 1
    age = clock.now - 1012.0
    assert age - 1e-9 <= _deferral(gate.acquire("slow")).delay_s <= age * 1.2 + 1e-9


def test_a_deferral_never_exceeds_the_longest_wait() -> None:
    clock = Clock()
    gate = _gate(clock, cap=1, failures=0)
    _ticket(gate.acquire("slow"))
    clock.now += 100.0  # the attempt in flight has taken 100 s so far
    delays = [_deferral(gate.acquire("slow")).delay_s for _ in range(20)]
    assert delays[0] >= 100.0
    assert max(delays) == MAX_DEFER_S


def test_attempts_without_an_answer_open_the_circuit_and_probes_double_it() -> None:
    clock = Clock()
    gate = _gate(clock, cap=4, failures=3, open_s=10.0)
    tickets = [_ticket(gate.acquire("dead")) for _ in range(3)]
    clock.now += 1.0
    for ticket in tickets:
        gate.release(ticket, answered=False)

    cut_off = _deferral(gate.acquire("dead"))
    assert cut_off.reason == "circuit open"
    assert cut_off.delay_s >= 10.0
    clock.now += 10.0
    probe = _ticket(gate.acquire("dead"))
    assert _deferral(gate.acquire("dead")).reason == "endpoint at its in-flight cap"  # one probe at a time
    clock.now += 1.0
    gate.release(probe, answered=False)

    assert _deferral(gate.acquire("dead")).delay_s >= 20.0  # cut off twice as long
    clock.now += 19.0
    assert _deferral(gate.acquire("dead")).reason == "circuit open"
    clock.now += 1.0
    probe = _ticket(gate.acquire("dead"))
    gate.release(probe, answered=True)  # any answer, even an error status, closes it
    [_ticket(gate.acquire("dead")) for _ in range(4)]  # the full share again


def test_answers_and_unsent_attempts_do_not_open_the_circuit() -> None:
    clock = Clock()
    gate = _gate(clock, cap=1, failures=2)
    for outcome in (False, True, False, None, None, True, False):
        gate.release(_ticket(gate.acquire("flaky")), answered=outcome)
    _ticket(gate.acquire("flaky"))  # never two failures in a row


def test_a_gate_without_a_failure_count_never_opens() -> None:
    clock = Clock()
    gate = _gate(clock, cap=1, failures=0)
    for _ in range(50):
        gate.release(_ticket(gate.acquire("dead")), answered=False)
    _ticket(gate.acquire("dead"))


def test_a_ticket_released_twice_frees_one_slot() -> None:
    clock = Clock()
    gate = _gate(clock, cap=1)
    ticket = _ticket(gate.acquire("a"))
    gate.release(ticket, answered=True)
    held = _ticket(gate.acquire("a"))
    gate.release(ticket, answered=True)  # already released: must not free `held`'s slot
    _deferral(gate.acquire("a"))
    gate.release(held, answered=True)


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        EndpointGate(max_in_flight=0, failures=1, open_s=1.0)
