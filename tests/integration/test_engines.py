"""Engine processes: models run in a child of the consumer, which kills and replaces it when a run crashes or
wedges, and goes on with the next batch in a fresh process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from consumers import metrics
from consumers.engines import EngineLost, Engines
from consumers.models import LoadedNetwork
from tests.images import grey_job

MAX_RUN_S = 3.0


def _network(network_id: str, folder: Path) -> LoadedNetwork:
    return LoadedNetwork(network_id=network_id, folder=folder, mean=None, size_bytes=1)


def _mean(result: object) -> float:
    assert isinstance(result, dict), result
    (mean,) = (tensor["data"][0] for tensor in result["tensors"] if tensor["name"] == "mean")
    return float(mean)


def _lost(reason: str) -> float:
    return metrics.ENGINE_RESTARTS.labels(reason)._value.get()  # type: ignore[attr-defined,no-any-return]


@contextlib.asynccontextmanager
async def _started(processes: int) -> AsyncIterator[Engines]:
    running = Engines(max_run_s=MAX_RUN_S, processes=processes)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def engines() -> AsyncIterator[Engines]:
    async with _started(processes=1) as running:
        yield running


@pytest.fixture
async def two_engines() -> AsyncIterator[Engines]:
    async with _started(processes=2) as running:
        yield running


async def test_a_batch_runs_in_the_engine_process_with_results_in_input_order(
    engines: Engines, tiny_models: dict[str, Path]
) -> None:
    network = _network("1", tiny_models["brightness"])
    run = await engines.run(network, [grey_job("1", 0), grey_job("1", 255), grey_job("1", 128)], alone=False)
    assert [round(_mean(result), 2) for result in run.results] == [0.0, 1.0, 0.5]
    assert run.predict_s > 0


async def test_a_wedged_batch_is_killed_and_the_next_batch_runs_in_a_fresh_process(
    engines: Engines, tiny_models: dict[str, Path]
) -> None:
    network = _network("2", tiny_models["wedging"])
    first = await engines.run(network, [grey_job("2", 0)] * 4, alone=False)  # measures this network's pace
    assert all(_mean(result) == 0.0 for result in first.results)
    stalled = _lost("stalled")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(EngineLost, match="ran longer than"):
        await engines.run(network, [grey_job("2", 0), grey_job("2", 255)], alone=False)
    # Suspected after the floor of half a second, long before the hard limit a lone run gets.
    assert loop.time() - started < MAX_RUN_S
    assert _lost("stalled") == stalled + 1
    again = await engines.run(network, [grey_job("2", 0)], alone=False)
    assert _mean(again.results[0]) == 0.0


async def test_a_last_lone_run_gets_the_whole_time_limit_in_a_process_of_its_own(
    engines: Engines, tiny_models: dict[str, Path]
) -> None:
    network = _network("3", tiny_models["wedging"])
    await engines.run(network, [grey_job("3", 0)], alone=False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    last = asyncio.create_task(engines.run(network, [grey_job("3", 255)], alone=True, full_time=True))
    await asyncio.sleep(0.5)
    # Meanwhile batches go on in the main process, and first lone runs in quarantine.
    during = await engines.run(network, [grey_job("3", 0)], alone=False)
    first = await engines.run(network, [grey_job("3", 128)], alone=True)
    assert _mean(during.results[0]) == 0.0 and round(_mean(first.results[0]), 2) == 0.5
    assert not last.done()
    with pytest.raises(EngineLost, match="ran longer than 3 s"):
        await last
    assert loop.time() - started >= MAX_RUN_S


async def test_a_crashed_process_is_named_and_replaced(
    engines: Engines, tiny_models: dict[str, Path]
) -> None:
    network = _network("4", tiny_models["slow"])
    await engines.run(network, [grey_job("4", 0)], alone=False)
    pid = engines.mains[0].pid
    assert pid is not None and pid != os.getpid()
    running = asyncio.create_task(engines.run(network, [grey_job("4", 0)] * 32, alone=False))
    await asyncio.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(EngineLost, match="killed by SIGKILL"):
        await running
    after = await engines.run(network, [grey_job("4", 255)], alone=False)
    assert _mean(after.results[0]) == 1.0
    assert engines.mains[0].pid not in (None, pid)


async def test_a_network_that_cannot_load_fails_its_jobs_not_the_process(
    engines: Engines, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    run = await engines.run(_network("5", tmp_path / "empty"), [grey_job("5", 0)], alone=False)
    assert "saved_model.pb" in str(run.results[0]) or "SavedModel" in str(run.results[0])
    pid = engines.mains[0].pid
    assert pid is not None
    assert engines.mains[0].running


async def test_a_crash_of_the_models_own_is_deterministic_and_a_kill_from_outside_is_not(
    engines: Engines, tiny_models: dict[str, Path]
) -> None:
    network = _network("6", tiny_models["crashing"])
    assert _mean((await engines.run(network, [grey_job("6", 0)], alone=False)).results[0]) == 0.0
    with pytest.raises(EngineLost, match="killed by SIGABRT") as crashed:
        await engines.run(network, [grey_job("6", 0), grey_job("6", 255)], alone=False)
    assert crashed.value.deterministic  # the input would do it again: one lone run proves it
    # The fresh process loads the network again (a request of its own), then runs the next batch.
    assert _mean((await engines.run(network, [grey_job("6", 0)], alone=False)).results[0]) == 0.0
    pid = engines.mains[0].pid
    assert pid is not None
    running = asyncio.create_task(
        engines.run(_network("7", tiny_models["slow"]), [grey_job("7", 0)] * 64, alone=False)
    )
    await asyncio.sleep(0.5)
    os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer would: not the input's doing
    with pytest.raises(EngineLost, match="killed by SIGKILL") as killed:
        await running
    assert not killed.value.deterministic


async def test_a_first_lone_run_is_suspected_early_and_a_last_one_gets_the_whole_limit(
    engines: Engines, tiny_models: dict[str, Path]
) -> None:
    network = _network("8", tiny_models["wedging"])
    await engines.run(network, [grey_job("8", 0)], alone=True)  # measures the pace; loads quarantine
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(EngineLost, match=r"ran longer than 0\.5 s") as stalled:
        await engines.run(network, [grey_job("8", 255)], alone=True)
    assert loop.time() - started < MAX_RUN_S and not stalled.value.deterministic
    # A good job's first lone run in the replaced process: the load is not counted in its deadline.
    assert _mean((await engines.run(network, [grey_job("8", 0)], alone=True)).results[0]) == 0.0


async def test_a_run_is_announced_once_its_process_is_up_and_the_network_loaded(
    engines: Engines, tiny_models: dict[str, Path]
) -> None:
    """What inference counts a lone run at: a consumer that dies before its engines are up charges none."""
    network = _network("13", tiny_models["brightness"])
    seen: list[tuple[int | None, bool]] = []

    async def starting() -> None:
        seen.append((engines.quarantine.pid, engines.quarantine.holds("13")))

    run = await engines.run(network, [grey_job("13", 0)], alone=True, starting=starting)
    assert _mean(run.results[0]) == 0.0
    assert seen == [(engines.quarantine.pid, True)] and seen[0][0] is not None


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_lost_main_process_is_replaced_in_the_background_while_batches_go_to_the_others(
    two_engines: Engines, tiny_models: dict[str, Path]
) -> None:
    network = _network("9", tiny_models["crashing"])
    await two_engines.load(network)
    with pytest.raises(EngineLost):
        await two_engines.run(network, [grey_job("9", 0), grey_job("9", 255)], alone=False)
    (lost,) = [slot for slot in two_engines.mains if not slot.running]
    assert lost.replacing
    # The next batches go to the process still running, without waiting for the replacement's load.
    for _ in range(3):
        assert _mean((await two_engines.run(network, [grey_job("9", 0)], alone=False)).results[0]) == 0.0
    assert lost.replacing
    await _until(lambda: lost.running)
    assert lost.holds("9")  # loaded in the background, with the network the lost process held


async def test_a_network_dropped_while_a_replacement_loads_it_is_dropped_from_the_replacement(
    engines: Engines, tiny_models: dict[str, Path]
) -> None:
    network = _network("11", tiny_models["crashing"])
    await engines.run(network, [grey_job("11", 0)], alone=False)
    with pytest.raises(EngineLost):
        await engines.run(network, [grey_job("11", 255), grey_job("11", 0)], alone=False)
    (slot,) = engines.mains
    assert slot.replacing
    engines.drop("11")  # redeployed, say: the replacement must not keep the old files' model
    await _until(lambda: slot.running and not slot.holds("11"))


async def test_first_lone_runs_waiting_when_the_quarantine_process_is_lost_go_on_in_a_main_one(
    engines: Engines, tiny_models: dict[str, Path]
) -> None:
    network = _network("12", tiny_models["crashing"])
    await engines.run(network, [grey_job("12", 0)], alone=False)  # measures the pace
    await engines.run(network, [grey_job("12", 0)], alone=True)  # starts quarantine
    culprit = asyncio.create_task(engines.run(network, [grey_job("12", 255)], alone=True))
    await asyncio.sleep(0)  # the culprit takes the quarantine process first
    innocent = asyncio.create_task(engines.run(network, [grey_job("12", 128)], alone=True))
    with pytest.raises(EngineLost, match="SIGABRT"):
        await culprit
    assert round(_mean((await innocent).results[0]), 2) == 0.5
    assert not engines.quarantine.running  # it did not wait for a fresh quarantine process


async def test_batches_run_side_by_side_in_as_many_processes_as_configured(
    two_engines: Engines, tiny_models: dict[str, Path]
) -> None:
    """While one process spins on a wedged batch, the other serves the next batch: they do not queue."""
    network = _network("10", tiny_models["wedging"])
    await two_engines.run(network, [grey_job("10", 0)] * 4, alone=False)  # measures the pace
    wedged = asyncio.create_task(two_engines.run(network, [grey_job("10", 255)], alone=False))
    await asyncio.sleep(0)  # the wedged batch takes its process first
    served = await two_engines.run(network, [grey_job("10", 0), grey_job("10", 128)], alone=False)
    assert [round(_mean(result), 2) for result in served.results] == [0.0, 0.5]
    assert not wedged.done()
    with pytest.raises(EngineLost, match="ran longer than"):
        await wedged
    assert len({slot.pid for slot in two_engines.mains}) == 2
