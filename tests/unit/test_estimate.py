"""Step counts between capture windows, estimated from CPU time (aiobpf.daemon.budget.estimate)."""

from __future__ import annotations

import pytest

from aiobpf.bpf.abi import TargetStats
from aiobpf.daemon.budget.estimate import RATIO_HALF_LIFE_S, Reading, StepEstimate


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

    def run(self, seconds: float, cpu_share: float, attached: bool) -> None:
        own = seconds * cpu_share
        steps = own * self.steps_per_cpu_s
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
    _window(est, p, share=0.8, cost=2e-6)
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
