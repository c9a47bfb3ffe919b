"""What the benchmark reads off the processes it runs: CPU time from /proc, and a consumer's /metrics."""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_CPUS = os.cpu_count() or 1

# Consumer histograms whose sums, differenced over a measured window, say where a consumer's time went.
CONSUMER_SUMS = (
    "percept_inference_batch_size_sum",
    "percept_inference_batch_size_count",
    "percept_inference_prepare_seconds_sum",
    "percept_inference_predict_seconds_sum",
    "percept_inference_postprocess_seconds_sum",
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads, so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may itself hold spaces.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS_PER_S


def family(root: int) -> list[int]:
    """`root` and every process descended from it. By parent links, not process groups: BentoML's process
    manager puts its workers in sessions of their own; Percept's consumers fork their engine processes."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue  # ended while we looked
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: ppid
    found, frontier = [root], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def family_cpu_seconds(root: int) -> float:
    """CPU seconds so far of `root` and its live descendants."""
    total = 0.0
    for pid in family(root):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(pid)
    return total


def machine_ticks() -> tuple[int, int, int]:
    """(busy, iowait, total) clock ticks of all cores since boot: what else ran, and waits on the disk."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0]  # "cpu  user nice system idle iowait ..."
    user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in first.split()[1:9])
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total - idle - iowait, iowait, total


def own_cpu_seconds() -> float:
    """This process's CPU seconds, all its threads: the load generator's cost (TensorFlow runs in a child, not
    here). From getrusage, to the microsecond: os.times counts in clock ticks of 10 ms."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def consumer_sums(session: aiohttp.ClientSession, metrics_url: str) -> dict[str, float]:
    """The CONSUMER_SUMS series of one consumer, from its Prometheus text."""
    async with session.get(metrics_url) as response:
        text = await response.text()
    sums = dict.fromkeys(CONSUMER_SUMS, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in sums:
            sums[name] = float(value)
    return sums


@dataclass(frozen=True)
class Snapshot:
    cpu_s: dict[str, float]  # by role (gateway, consumer-N, broker, load_generator)
    consumer: dict[str, float]  # CONSUMER_SUMS, added up over the consumers
    machine: tuple[int, int, int]  # machine_ticks()


async def snapshot(session: aiohttp.ClientSession, pids: dict[str, int], metrics_urls: list[str]) -> Snapshot:
    # A consumer's models run in its engine processes (consumers.engines): its whole family counts.
    cpu = {role: family_cpu_seconds(pid) for role, pid in pids.items()}
    cpu["load_generator"] = own_cpu_seconds()
    machine = machine_ticks()
    totals = dict.fromkeys(CONSUMER_SUMS, 0.0)
    for url in metrics_urls:
        for name, value in (await consumer_sums(session, url)).items():
            totals[name] += value
    return Snapshot(cpu, totals, machine)


def usage(before: Snapshot, after: Snapshot, *, images: int, elapsed_s: float) -> dict[str, Any]:
    """Where the measured window's CPU went, per image, and what the consumers say they spent it on."""
    if not images:
        return {}
    cpu_ms = {role: (after.cpu_s[role] - before.cpu_s[role]) * 1000 / images for role in after.cpu_s}
    consumers = [role for role in cpu_ms if role.startswith("consumer-")]
    cpu_ms["consumers_total"] = sum(cpu_ms[role] for role in consumers)
    spent = {name: after.consumer[name] - before.consumer[name] for name in CONSUMER_SUMS}
    batches = spent["percept_inference_batch_size_count"]
    ours = sum(after.cpu_s[role] - before.cpu_s[role] for role in after.cpu_s) / (elapsed_s * _CPUS)
    busy, iowait, total = (end - start for start, end in zip(before.machine, after.machine, strict=True))
    return {
        "cpu_ms_per_image": {role: round(value, 2) for role, value in cpu_ms.items()},
        # Shares of all cores: our processes, everything (other work on the machine skews a run), disk waits.
        "cpu_busy": {
            "ours": round(ours, 2),
            "whole_machine": round(busy / total, 2),
            "iowait": round(iowait / total, 2),
        },
        "consumer_mean_batch_size": round(spent["percept_inference_batch_size_sum"] / batches, 2)
        if batches
        else None,
        # Wall time inside the consumer, per image (decode threads run alongside the model thread).
        "consumer_wall_ms_per_image": {
            "decode_preprocess": round(spent["percept_inference_prepare_seconds_sum"] * 1000 / images, 2),
            "predict": round(spent["percept_inference_predict_seconds_sum"] * 1000 / images, 2),
            "postprocess": round(spent["percept_inference_postprocess_seconds_sum"] * 1000 / images, 2),
        },
    }
