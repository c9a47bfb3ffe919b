"""What a fresh engine process costs before it is useful, and what a crash-and-replace costs the machine: the
price of every poison job (issue 5), since a culprit is only found by losing processes to it.

Prints one JSON object. Run: `.venv/bin/python -m bench.engine_starts [cache folder]` (about 1 minute once the
bench models are built; on a quiet machine: `crash_and_replace` reads the machine-wide CPU counters).

- `start_stages_cpu_ms`: the stages of a start, as CPU of a process forked from the consumer's fork server (as
  every engine process is), one TensorFlow thread: the first TensorFlow op (the runtime's per-process set-up),
  loading the SavedModel, its first run (the function's instantiation: graph passes, oneDNN's rewrite), and a
  steady run for scale. Medians over `--starts` processes, for the tiny crashing classifier of the fault
  tests (16x16) and MobileNetV2 (224x224).
- `crash_and_replace`: one main engine process (`consumers.engines.Engines`) is crashed by a bright image and
  replaced in the background, `--crashes` times; machine-wide CPU per cycle (the lost process, its
  replacement's load and first run, the fork server, the consumer's side), beside a steady batch of one.
  `ratio_to_steady_run` says how many good runs one crash costs, engine work alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.models import MODELS, ensure_built
from consumers.engines import EngineLost, Engines
from consumers.forkserver import context
from consumers.models import LoadedNetwork
from tests.images import grey_job

# bench.probes (aiohttp) and percept.* are imported where used: every child of the fork server imports this
# module, as each engine process imports percept.cli, so what it imports at load counts in every start.
DEFAULT_CACHE = Path("data/bench-models")


def _machine_busy_s() -> float:
    from bench.probes import machine_ticks

    busy, _, _ = machine_ticks()
    return busy / os.sysconf("SC_CLK_TCK")


def _stages(folder: str, replies: Connection) -> None:
    """In a child of the fork server: each stage of a start, in CPU ms."""
    import tensorflow as tf

    from bench.probes import own_cpu_seconds
    from engine.model import SavedModel

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    stages: dict[str, float] = {}
    started = own_cpu_seconds()

    def mark(stage: str) -> None:
        nonlocal started
        now = own_cpu_seconds()
        stages[stage] = round(1000 * (now - started), 1)
        started = now

    tf.constant(1.0) + 1.0
    mark("first_op")
    model = SavedModel.load(Path(folder))
    mark("load")
    model.warm_up(1)
    mark("first_run")
    model.warm_up(1)
    mark("steady_run")
    replies.send(stages)
    replies.close()


def _start_stages(folder: Path, starts: int) -> dict[str, float]:
    forkserver = context()
    samples: list[dict[str, float]] = []
    for _ in range(starts):
        ours, theirs = forkserver.Pipe(duplex=False)
        process = forkserver.Process(target=_stages, args=(str(folder), theirs))
        process.start()
        theirs.close()
        samples.append(ours.recv())
        process.join()
    return {stage: round(statistics.median(sample[stage] for sample in samples), 1) for stage in samples[0]}


def _build_crashing(folder: Path) -> None:
    from tests.models import build_crashing_classifier

    build_crashing_classifier(folder)


async def _crash_and_replace(folder: Path, crashes: int, runs: int) -> dict[str, Any]:
    from bench.probes import own_cpu_seconds

    network = LoadedNetwork(network_id="crashing", folder=folder, mean=None, size_bytes=1)
    engines = Engines(max_run_s=10, processes=1)
    await engines.start()
    try:
        await engines.load(network)
        dark, bright = grey_job("crashing", 0), grey_job("crashing", 255)  # bright aborts it
        for _ in range(20):
            await engines.run(network, [dark], alone=False)
        await asyncio.sleep(1)  # the start's own work settles

        busy = _machine_busy_s()
        for _ in range(runs):
            await engines.run(network, [dark], alone=False)
        steady_ms = 1000 * (_machine_busy_s() - busy) / runs

        busy, consumer, wall = _machine_busy_s(), own_cpu_seconds(), time.perf_counter()
        for _ in range(crashes):
            try:
                await engines.run(network, [dark, bright], alone=False)
                raise SystemExit("the bright image did not crash the engine process")
            except EngineLost:
                pass
            await engines.run(network, [dark], alone=False)  # on the replacement, once it is loaded
        cycle_ms = 1000 * (_machine_busy_s() - busy) / crashes
        return {
            "crashes": crashes,
            "machine_cpu_ms_per_crash": round(cycle_ms, 1),
            "consumer_cpu_ms_per_crash": round(1000 * (own_cpu_seconds() - consumer) / crashes, 1),
            "wall_ms_per_crash": round(1000 * (time.perf_counter() - wall) / crashes, 1),
            "steady_run_machine_cpu_ms": round(steady_ms, 2),
            "ratio_to_steady_run": round(cycle_ms / steady_ms, 1),
        }
    finally:
        await engines.stop()


def main() -> None:
    from percept.logs import configure_logging
    from percept.settings import LogFormat

    configure_logging(LogFormat.AUTO, "warning")  # to stderr: stdout is the JSON
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", nargs="?", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--crashes", type=int, default=20)
    parser.add_argument("--runs", type=int, default=300)
    arguments = parser.parse_args()
    mobilenet = next(model for model in MODELS if model.key == "mobilenet_v2")
    with tempfile.TemporaryDirectory() as scratch:
        crashing = Path(scratch) / "crashing"
        builder = context().Process(target=_build_crashing, args=(crashing,))
        builder.start()
        builder.join()
        print("measuring starts", file=sys.stderr)
        stages = {
            "tiny_crashing_16x16": _start_stages(crashing, arguments.starts),
            "mobilenet_v2": _start_stages(ensure_built(mobilenet, arguments.cache), arguments.starts),
        }
        print("measuring crashes", file=sys.stderr)
        cycle = asyncio.run(_crash_and_replace(crashing, arguments.crashes, arguments.runs))
    print(json.dumps({"start_stages_cpu_ms": stages, "crash_and_replace": cycle}, indent=2))


if __name__ == "__main__":
    main()
