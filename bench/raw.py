"""The engine alone, no Percept around it: forward passes per batch size, and decoding + pre-processing.

Run by bench.pipeline in a child process, with the same TensorFlow thread settings as a consumer, so the
load generator never shares a process with TensorFlow; it also builds the models on first use. Prints one
JSON object keyed by model. `python -m bench.raw CACHE_DIR SECONDS [--models KEY,...]` (SECONDS: measuring
time per figure).

Two thread layouts of the forward pass: this process with the TensorFlow threads it was given (the
environment's TF_NUM_INTRAOP_THREADS: every core, "the raw engine" of issue 6), and one process per core,
each with one intra-op and one inter-op thread, all predicting batches of the same size at the same time
(started together behind a barrier, measured over one common window; their images/s summed).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from bench.images import sample_jpegs
from bench.models import MODELS, BenchModel, ensure_built
from bench.probes import machine_ticks
from engine.decode import decode_image
from engine.model import SavedModel
from engine.preprocess import decode_min_side, preprocess
from schemas.networks import ImagePreprocessing

BATCH_SIZES = (1, 8, 16, 32)
WARM_UP_CALLS = 3  # the first calls trace and allocate; no figure includes them
CPUS = os.cpu_count() or 1
# The parallel layout: this many processes, each with one TensorFlow intra-op and one inter-op thread.
LAYOUT_THREADS = 1
WINDOW_LEAD_S = 0.5  # from "go" to the common window: every process is predicting by then
WINDOW_MIN_CALLS = 3  # the window lasts at least this many of the slowest process's calls


def _cpu_s() -> float:
    times = os.times()  # every thread of this process: TensorFlow's pool included
    return times.user + times.system


def _rate(images_per_call: int, call: Callable[[], object], seconds: float) -> tuple[float, float]:
    """Images per second of `call`, repeated for at least `seconds` after warming up, and the CPU
    milliseconds it spent per image (which, unlike the rate, other work on the machine hardly changes)."""
    for _ in range(WARM_UP_CALLS):
        call()
    calls = 0
    started, cpu_started = time.perf_counter(), _cpu_s()
    while (elapsed := time.perf_counter() - started) < seconds or calls < WARM_UP_CALLS:
        call()
        calls += 1
    images = calls * images_per_call
    return round(images / elapsed, 1), round((_cpu_s() - cpu_started) * 1000 / images, 2)


def _busy(
    our_cpu_s: float, elapsed_s: float, ticks: tuple[int, int, int], ticks_after: tuple[int, int, int]
) -> dict[str, float]:
    """Shares of all cores over a measurement: ours, and everything's (bench.probes.machine_ticks)."""
    return {
        "ours": round(our_cpu_s / (elapsed_s * CPUS), 2),
        "whole_machine": round((ticks_after[0] - ticks[0]) / max(1, ticks_after[2] - ticks[2]), 2),
    }


def _feed(examples: Sequence[np.ndarray], size: int) -> dict[str, np.ndarray]:
    return {"image": np.stack([examples[index % len(examples)] for index in range(size)])}


def _in_window(bounds: list[tuple[float, float]], start: float, end: float) -> tuple[float, float]:
    """The share of back-to-back calls that fell in [start, end]: (calls, CPU seconds).

    `bounds` holds (wall time, process CPU time) before the first call and after each; a call that straddles
    an end of the window counts for the part of its wall time inside it, and as much of its CPU."""
    calls = cpu = 0.0
    for (began, cpu_began), (ended, cpu_ended) in itertools.pairwise(bounds):
        inside = min(ended, end) - max(began, start)
        if inside > 0:
            share = inside / (ended - began)
            calls += share
            cpu += share * (cpu_ended - cpu_began)
    return calls, cpu


def _layout_worker(conn: Connection, folder: str, examples: list[np.ndarray], threads: int) -> None:
    """One process of the parallel layout, driven over `conn`: ("warm", size) -> ("ready", seconds of one
    call); ("run", start, end) -> ("done", calls, CPU s in [start, end], whether it predicted throughout);
    None -> exit. Start and end are perf_counter times, which every process reads from the same clock."""
    # Before TensorFlow is imported, and again through its API before any op runs: either alone suffices.
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    saved = SavedModel.load(Path(folder))
    conn.send(
        (
            "loaded",
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        )
    )
    feed: dict[str, np.ndarray] = {}
    while (order := conn.recv()) is not None:
        if order[0] == "warm":
            feed = _feed(examples, order[1])
            for _ in range(WARM_UP_CALLS):
                began = time.perf_counter()
                saved.predict(feed)
            conn.send(("ready", time.perf_counter() - began))
        else:
            _, start, end = order
            bounds = [(time.perf_counter(), time.process_time())]
            while bounds[-1][0] < end:
                saved.predict(feed)
                bounds.append((time.perf_counter(), time.process_time()))
            calls, cpu = _in_window(bounds, start, end)
            conn.send(("done", calls, cpu, bounds[0][0] <= start))


def measure_parallel(
    folder: Path, examples: list[np.ndarray], seconds: float, processes: int, threads: int
) -> dict[str, Any]:
    """`processes` processes with `threads` TensorFlow threads each, predicting batches of one size at the
    same time, for each batch size: their images/s summed over a common window, and CPU ms per image."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no TensorFlow state inherited
    pipes, workers = [], []
    for _ in range(processes):
        ours, theirs = context.Pipe()
        worker = context.Process(
            target=_layout_worker, args=(theirs, str(folder), examples, threads), daemon=True
        )
        worker.start()
        theirs.close()
        pipes.append(ours)
        workers.append(worker)
    try:
        loaded = [pipe.recv() for pipe in pipes]
        per_batch, cpu_ms, per_process, throughout = {}, {}, {}, True
        cpu_busy: dict[str, dict[str, float]] = {}
        for size in BATCH_SIZES:
            for pipe in pipes:
                pipe.send(("warm", size))
            slowest_call_s = max(pipe.recv()[1] for pipe in pipes)  # every process ready: the barrier
            window = max(seconds, WINDOW_MIN_CALLS * slowest_call_s)
            start = time.perf_counter() + WINDOW_LEAD_S
            for pipe in pipes:
                pipe.send(("run", start, start + window))
            time.sleep(max(0.0, start - time.perf_counter()))
            ticks = machine_ticks()
            time.sleep(max(0.0, start + window - time.perf_counter()))
            ticks_after = machine_ticks()
            done = [pipe.recv() for pipe in pipes]
            cpu_busy[str(size)] = _busy(sum(cpu for _, _, cpu, _ in done), window, ticks, ticks_after)
            images = [calls * size for _, calls, _, _ in done]
            per_batch[str(size)] = round(sum(images) / window, 1)
            cpu_ms[str(size)] = round(sum(cpu for _, _, cpu, _ in done) * 1000 / sum(images), 2)
            per_process[str(size)] = [round(count / window, 1) for count in images]
            throughout = throughout and all(whole for *_, whole in done)
        for pipe in pipes:
            pipe.send(None)
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    return {
        "processes": processes,
        "intra_op_threads": loaded[0][1],
        "inter_op_threads": loaded[0][2],
        "predict_images_per_s": per_batch,
        "predict_cpu_ms_per_image": cpu_ms,
        "per_process_images_per_s": per_process,
        # Shares of all cores over the window: ours, and everything's (ours well below it: other work ran).
        "cpu_busy": cpu_busy,
        # False: a process started predicting after the window had begun (a very busy machine).
        "all_predicting_throughout": throughout,
    }


def layout_key(processes: int, threads: int) -> str:
    return f"{processes}x{threads}"


def measure(
    model: BenchModel, cache: Path, jpegs: list[bytes], seconds: float, parallel: bool = True
) -> dict[str, Any]:
    spec = ImagePreprocessing(target_size=f"{model.side}x{model.side}", pixel_scaling=model.pixel_scaling)
    examples = [preprocess(decode_image(data), spec)[0] for data in jpegs]
    folder = ensure_built(model, cache)
    saved = SavedModel.load(folder)
    per_batch, cpu_ms, cpu_busy = {}, {}, {}
    for size in BATCH_SIZES:
        feed = _feed(examples, size)
        ticks, cpu_s, began = machine_ticks(), _cpu_s(), time.perf_counter()
        per_batch[str(size)], cpu_ms[str(size)] = _rate(size, functools.partial(saved.predict, feed), seconds)
        cpu_busy[str(size)] = _busy(_cpu_s() - cpu_s, time.perf_counter() - began, ticks, machine_ticks())
    best = max(per_batch, key=lambda size: per_batch[size])
    # The same forward passes in other thread layouts: processes x TensorFlow threads per process.
    threads_here = int(os.environ.get("TF_NUM_INTRAOP_THREADS", "0")) or CPUS
    layouts: dict[str, dict[str, Any]] = {
        layout_key(1, threads_here): {
            "processes": 1,
            "intra_op_threads": threads_here,
            "inter_op_threads": int(os.environ.get("TF_NUM_INTEROP_THREADS", "0")) or "default",
            "predict_images_per_s": per_batch,
            "predict_cpu_ms_per_image": cpu_ms,
            "cpu_busy": cpu_busy,  # warm-up calls included
        }
    }
    if parallel and CPUS > 1:
        layouts[layout_key(CPUS, LAYOUT_THREADS)] = measure_parallel(
            folder, examples, seconds, CPUS, LAYOUT_THREADS
        )
    best_layout, best_layout_size = max(
        ((key, size) for key, layout in layouts.items() for size in layout["predict_images_per_s"]),
        key=lambda pair: layouts[pair[0]]["predict_images_per_s"][pair[1]],
    )
    # One image per call on one thread: the per-core rate a consumer's decode threads can reach.
    # As the consumer does it: JPEGs decoded in the DCT domain down to the network input's resolution.
    cycle = itertools.cycle(jpegs)
    min_side = decode_min_side(spec)
    prepare, prepare_cpu_ms = _rate(
        1, lambda: preprocess(decode_image(next(cycle), min_side=min_side), spec), seconds
    )
    return {
        "predict_images_per_s": per_batch,
        "predict_cpu_ms_per_image": cpu_ms,
        "best_batch_size": int(best),
        "best_images_per_s": per_batch[best],
        "layouts": layouts,
        "best_layout": {"layout": best_layout, "batch_size": int(best_layout_size)},
        "best_layout_images_per_s": layouts[best_layout]["predict_images_per_s"][best_layout_size],
        "decode_preprocess_images_per_s_per_core": prepare,
        "decode_preprocess_cpu_ms_per_image": prepare_cpu_ms,
        # The least CPU any server can spend on an image: decode + pre-process, and predict in batches.
        "engine_cpu_ms_per_image": round(min(cpu_ms.values()) + prepare_cpu_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw", description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path, help="where the models are built once")
    parser.add_argument("seconds", type=float, help="measuring time per figure")
    parser.add_argument("--models", default=",".join(model.key for model in MODELS))
    parser.add_argument("--no-layouts", action="store_true", help="measure this process's layout only")
    args = parser.parse_args()
    jpegs = sample_jpegs()
    models = [model for model in MODELS if model.key in args.models.split(",")]
    print(
        json.dumps(
            {
                model.key: measure(model, args.cache, jpegs, args.seconds, parallel=not args.no_layouts)
                for model in models
            }
        )
    )


if __name__ == "__main__":
    main()
