"""bench/daemon.py's in-phase view: a window's cost against the phase's own quiet seconds."""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "daemon.py"
_spec = importlib.util.spec_from_file_location("bench_daemon", BENCH)
assert _spec and _spec.loader
bench_daemon = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_daemon)
in_phase_cost = bench_daemon.in_phase_cost


def _samples(bins: list[tuple[int, float, float]]) -> list[tuple[float, int, float, float]]:
    """Cumulative samples, one a second, from per-second (ops, CPU s, attached s)."""
    out = [(0.0, 0, 0.0, 0.0)]
    for t, (ops, cpu, attached) in enumerate(bins, 1):
        _, o, c, a = out[-1]
        out.append((float(t), o + ops, c + cpu, a + attached))
    return out


def test_a_window_costs_what_its_seconds_used_beyond_the_baseline() -> None:
    quiet = (1000, 1.0, 0.0)
    # one window: its second does 800 operations for a full second of CPU (baseline:
    # 1 ms per operation, so 0.2 s more), and the second after it still pays 0.05 s
    bins = [quiet] * 10 + [(800, 1.0, 0.8), (950, 1.0, 0.0)] + [quiet] * 10
    cost = in_phase_cost(_samples(bins))
    ops = 20 * 1000 + 800 + 950
    assert math.isclose(cost["percent"], 100 * (22.0 - 1e-3 * ops) / (1e-3 * ops))
    assert cost["windows"] == 1
    assert math.isclose(cost["excess_ms_per_window"], 1000 * (22.0 - 1e-3 * ops))


def test_drift_between_phases_does_not_matter_only_within() -> None:
    for per_op in (1e-3, 2e-3):   # a VM twice as slow: the same relative cost
        bins = [(1000, 1000 * per_op, 0.0)] * 10 + [(1000, 1100 * per_op, 0.5)] \
            + [(1000, 1000 * per_op, 0.0)] * 9
        assert math.isclose(in_phase_cost(_samples(bins))["percent"], 100 * 100 / 20000)


def test_windows_are_counted_once_however_many_seconds_they_span() -> None:
    hot, quiet = (1000, 1.0, 0.5), (1000, 1.0, 0.0)
    bins = list(itertools.chain([quiet] * 6, [hot, hot], [quiet] * 6, [hot], [quiet] * 6))
    cost = in_phase_cost(_samples(bins))
    assert cost["windows"] == 2
    assert cost["percent"] == 0.0


def test_no_quiet_second_no_figure() -> None:
    cost = in_phase_cost(_samples([(1000, 1.0, 1.0)] * 5))
    assert math.isnan(cost["percent"])


def test_no_window_no_figure() -> None:
    """A phase that held no window says nothing about what windows cost."""
    cost = in_phase_cost(_samples([(1000, 1.0, 0.0)] * 20))
    assert math.isnan(cost["percent"]) and cost["windows"] == 0
