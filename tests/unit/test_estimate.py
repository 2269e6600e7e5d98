"""Step counts between capture windows, estimated from CPU time (aiobpf.daemon.budget.estimate)."""

from __future__ import annotations

import pytest

from aiobpf.bpf.abi import TargetStats
from aiobpf.daemon.budget.estimate import (
    BOUND_HALF_LIFE_S,
    RATIO_HALF_LIFE_S,
    REGIME_TOLERANCE,
    Reading,
    Regime,
    StepEstimate,
)


class Process:
    """A process whose load changes: ``steps_per_cpu_s`` steps per CPU second of its
    own; while the probes are attached, each step costs ``probe_cost`` more."""

    def __init__(self, steps_per_cpu_s: float, probe_cost: float = 0.0) -> None:
        self.steps_per_cpu_s = steps_per_cpu_s
        self.probe_cost = probe_cost
        self.t = self.cpu = 0.0
        self.true_steps = 0.0
        self.counter = 0           # the BPF counter: moves only with probes attached
        self.finished = 0

    def run(self, seconds: float, cpu_share: float, attached: bool,
            steps: float | None = None) -> None:
        """``seconds`` at ``cpu_share`` of a CPU; ``steps`` taken in them (default: as
        many as that CPU time buys at ``steps_per_cpu_s``)."""
        own = seconds * cpu_share
        steps = own * self.steps_per_cpu_s if steps is None else steps
        self.true_steps += steps
        self.cpu += own + (steps * self.probe_cost if attached else 0.0)
        if attached:
            self.counter += round(steps)
            self.finished += round(steps / 10)
        self.t += seconds

    def reading(self) -> Reading:
        stats = TargetStats()
        stats.steps, stats.finished = self.counter, self.finished
        stats.step_hist[12] = self.counter
        return Reading(self.t, self.cpu, stats)


def _window(est: StepEstimate, p: Process, share: float, seconds: float = 0.5,
            cost: float = 0.0) -> None:
    est.read(p.reading(), attached=False)    # up to the attach
    p.run(seconds, share, attached=True)
    est.read(p.reading(), attached=True)     # up to the detach
    est.close_window(p.t, cost)


def _pause(est: StepEstimate, p: Process, shares: list[float], tick: float = 0.2) -> None:
    for share in shares:
        p.run(tick, share, attached=False)
        est.read(p.reading(), attached=False)


def test_between_windows_counts_follow_the_cpu_time_and_stop_when_idle() -> None:
    p, est = Process(100_000, probe_cost=2e-6), StepEstimate()
    est.read(p.reading(), attached=True)
    _window(est, p, share=0.4, cost=2e-6)
    assert est.estimating
    # the probes' cost (0.2 CPU s per 100k steps) is not taken for the load's
    assert est.steps_per_cpu_second() == pytest.approx(100_000, rel=0.01)
    _pause(est, p, [1.0] * 50)                              # a burst between windows
    assert est.counts.steps == pytest.approx(p.true_steps, rel=0.01)
    idle_from = est.counts.steps
    _pause(est, p, [0.0] * 200)                             # then nothing: no growth
    assert est.counts.steps == idle_from
    assert est.counts.finished == pytest.approx(est.counts.steps / 10, rel=0.01)
    assert sum(est.counts.step_hist) == pytest.approx(est.counts.steps, rel=0.01)
    assert est.hits == p.counter                            # unscaled: what the probes saw


def test_a_window_of_an_idle_process_does_not_spoil_the_ratio() -> None:
    p, est = Process(50_000), StepEstimate()
    est.read(p.reading(), attached=True)
    _window(est, p, share=0.5)
    _pause(est, p, [0.0] * 20)
    _window(est, p, share=0.0)                    # a window while idle
    assert est.steps_per_cpu_second() == pytest.approx(50_000, rel=0.01)
    _pause(est, p, [0.3] * 20)
    assert est.counts.steps == pytest.approx(p.true_steps, rel=0.01)


def test_nothing_is_estimated_before_a_window_saw_the_process_run() -> None:
    p, est = Process(50_000), StepEstimate()
    est.read(p.reading(), attached=False)
    _pause(est, p, [0.5] * 10)
    assert not est.estimating and est.counts.steps == 0.0


def test_a_changed_workload_is_learned_as_older_windows_fade() -> None:
    p, est = Process(100_000), StepEstimate()
    est.read(p.reading(), attached=True)
    _window(est, p, share=0.5)
    p.steps_per_cpu_s = 10_000                              # steps ten times costlier
    for _ in range(80):
        _pause(est, p, [0.5] * 150)                         # a window every 30 s
        _window(est, p, share=0.5)
    assert p.t > 2 * RATIO_HALF_LIFE_S
    assert est.steps_per_cpu_second() == pytest.approx(10_000, rel=0.3)


def test_a_steady_rate_is_counted_at_the_windows_rate_through_noisy_cpu_time() -> None:
    """A step's CPU cost moves with what else the machine runs (caches, other
    processes); a load whose rate does not change is counted at its windows' rate,
    not at its CPU time's."""
    p, est = Process(10_000), StepEstimate()
    est.read(p.reading(), attached=True)
    rate = 1_000.0                                          # steps/s, all along
    for _ in range(3):
        p.run(0.5, 0.1, attached=True, steps=rate * 0.5)    # windows at 100 us a step
        est.read(p.reading(), attached=True)
        est.close_window(p.t, 0.0)
        est.read(p.reading(), attached=False)
    before = est.counts.steps, p.true_steps
    for i in range(300):                                    # then 115 us a step, +-10 %
        share = 0.1 * 1.15 * (0.9 if i % 2 else 1.1)
        p.run(0.2, share, attached=False, steps=rate * 0.2)
        est.read(p.reading(), attached=False)
    added, true = est.counts.steps - before[0], p.true_steps - before[1]
    assert added == pytest.approx(true, rel=0.01)


def test_a_load_that_changes_beyond_the_tolerance_is_counted_from_cpu_time() -> None:
    p, est = Process(10_000), StepEstimate()
    est.read(p.reading(), attached=True)
    _window(est, p, share=0.5)
    more = 0.5 * (1 + 2 * REGIME_TOLERANCE)                  # twice the tolerance up
    _pause(est, p, [more] * 100)
    assert est.counts.steps == pytest.approx(p.true_steps, rel=0.01)


def test_a_regime_starts_again_when_a_window_sees_another_load() -> None:
    regime = Regime()
    assert not regime.fits(0.1, 1.0)                        # no window yet
    regime.join(1000, 0.1, 1.0)
    regime.join(1200, 0.11, 1.0)                            # the same load, joined
    assert regime.steps_in(1.0) == pytest.approx((0.5 * 1000 + 1200) / 1.5)
    assert regime.fits(0.1, 1.0) and regime.fits(0.01, 0.2)  # (0.2 s: a clock tick off)
    assert not regime.fits(0.0, 1.0)                         # idle
    regime.join(500, 0.5, 1.0)                              # five times the CPU: a new one
    assert regime.steps_in(1.0) == 500 and not regime.fits(0.1, 1.0)


def test_a_light_load_that_goes_idle_stops_being_counted() -> None:
    """At 3 % of a CPU a reading's CPU time is below /proc's clock tick: whether the
    load goes on is judged over the last seconds, not one reading."""
    p, est = Process(10_000), StepEstimate()
    est.read(p.reading(), attached=True)
    _window(est, p, share=0.03)
    _pause(est, p, [0.03] * 20)
    idle_from = est.counts.steps
    _pause(est, p, [0.0] * 100)                              # 20 s idle
    assert est.counts.steps - idle_from < 0.03 * 10_000 * 1.0   # under a second's steps


def test_a_cpu_bound_load_is_counted_from_its_cpu_time() -> None:
    """A loop stepping as fast as it can loses steps when other processes take its CPU:
    its steps follow its CPU time, not its windows' rate."""
    p, est = Process(10_000), StepEstimate()
    est.read(p.reading(), attached=True)
    _window(est, p, share=0.9)
    _pause(est, p, [0.9 * 0.8] * 100)                        # 20 % of its CPU taken
    assert est.counts.steps == pytest.approx(p.true_steps, rel=0.01)


def test_a_cpu_bound_load_follows_its_step_cost_within_minutes() -> None:
    """Other work on the machine moves a CPU-bound step's CPU cost for minutes on end:
    the windows in which the process was CPU-bound make a ratio that follows it
    (BOUND_HALF_LIFE_S), not the long average of all windows."""
    p, est = Process(15_000), StepEstimate()
    est.read(p.reading(), attached=True)
    for _ in range(60):                                     # 15 minutes at 15,000
        _window(est, p, share=1.0, seconds=0.2)
        _pause(est, p, [1.0] * 75)                          # a window every 15 s
    p.steps_per_cpu_s = 10_000                              # the machine gets busier
    for _ in range(20):                                     # 5 minutes of windows
        _window(est, p, share=1.0, seconds=0.2)
        _pause(est, p, [1.0] * 75)
    assert BOUND_HALF_LIFE_S <= 60.0
    before = est.counts.steps, p.true_steps
    _pause(est, p, [1.0] * 600)                             # 2 minutes between windows
    added, true = est.counts.steps - before[0], p.true_steps - before[1]
    assert added == pytest.approx(true, rel=0.05)
    # a load that is not CPU-bound keeps the long average
    assert est.steps_per_cpu_second() > 11_000


def test_a_window_of_an_idle_process_does_not_price_a_burst() -> None:
    """A window of an idle process sees a few cheap steps (its timers) in a fraction of
    a millisecond of CPU time: a burst after it is not counted at their ratio."""
    p, est = Process(10_000), StepEstimate()
    est.read(p.reading(), attached=True)
    p.run(0.2, 0.001, attached=True, steps=20)              # 20 steps in 0.2 ms of CPU
    est.read(p.reading(), attached=True)
    est.close_window(p.t, 0.0)
    assert not est.estimating
    _pause(est, p, [1.0] * 50)                              # a 10 s burst
    assert est.counts.steps < p.true_steps
    _window(est, p, share=1.0, seconds=0.2)                 # a window sees it
    assert est.estimating
    before = est.counts.steps, p.true_steps
    _pause(est, p, [1.0] * 50)
    assert est.counts.steps - before[0] == pytest.approx(p.true_steps - before[1], rel=0.01)
