"""The raw engine benchmark's arithmetic: what share of back-to-back calls fell in the common window, and the
summary's ratios to the engine's two baselines. No TensorFlow runs here."""

from __future__ import annotations

import pytest

from bench.compare import _summary
from bench.raw import _in_window


def test_calls_inside_the_window_count_whole_and_with_their_cpu() -> None:
    # Three calls of 1 s each, 0.5 CPU s each; the window covers all of them.
    bounds = [(10.0, 0.0), (11.0, 0.5), (12.0, 1.0), (13.0, 1.5)]
    assert _in_window(bounds, 10.0, 13.0) == pytest.approx((3.0, 1.5))


def test_calls_straddling_an_end_of_the_window_count_for_their_share_inside() -> None:
    # A 2 s call from 0 to 2 (1 CPU s), then a 1 s call from 2 to 3 (2 CPU s); the window is [1, 2.5].
    bounds = [(0.0, 0.0), (2.0, 1.0), (3.0, 3.0)]
    calls, cpu = _in_window(bounds, 1.0, 2.5)
    assert calls == pytest.approx(0.5 + 0.5)
    assert cpu == pytest.approx(0.5 * 1.0 + 0.5 * 2.0)


def test_calls_outside_the_window_do_not_count() -> None:
    bounds = [(0.0, 0.0), (1.0, 1.0), (5.0, 2.0), (6.0, 3.0)]
    assert _in_window(bounds, 2.0, 4.0) == pytest.approx((0.5, 0.5))  # the long call's middle half
    assert _in_window(bounds[:2], 2.0, 4.0) == (0.0, 0.0)


def test_the_summary_divides_by_both_baselines() -> None:
    levels = {
        "1": {"images_per_s": 40.0, "latency": {"p50_ms": 25.0}, "errors": 0},
        "32": {
            "images_per_s": 100.0,
            "latency": {"p50_ms": 300.0},
            "errors": 1,
            "cpu_ms_per_image": {"server": 20.0},
        },
    }
    summary = _summary(125.0, 160.0, 16.0, {"triton": levels})["triton"]
    assert summary["ratio_to_raw"] == {"1": 0.32, "32": 0.8}
    assert summary["ratio_to_best_layout"] == {"1": 0.25, "32": 0.625}
    assert summary["best"] == {"concurrency": 32, "ratio_to_raw": 0.8, "ratio_to_best_layout": 0.625}
    assert summary["server_cpu_vs_engine_c32"] == 1.25
    assert summary["errors"] == 1
