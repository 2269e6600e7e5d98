"""One traced process's account: what its probes counted and cost, and what is exported.

Pure: the daemon's loop reads the BPF counters and the CPU times and hands them in
(``read``, ``measure``, the window's ``open_window``/``close_window``); the account
keeps the rates the budget plans with (``overhead_full``), the estimated counts
(aiobpf.daemon.budget.estimate) and the time traced and attached, and gives the
values the metrics export.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiobpf.bpf.abi import TargetStats
from aiobpf.collector.procfs import ThreadTimes
from aiobpf.daemon.budget.cost import CostModel, full_overhead
from aiobpf.daemon.budget.estimate import Reading, StepEstimate
from aiobpf.daemon.budget.windows import MEASURING_WINDOW

RATE_SMOOTHING = 0.5   # weight of the newest measurement in the step and CPU rates
MAX_RATE_SPAN_S = 1.0  # rates are measured over at most this much of a window ...
RATE_SPAN_SHARE = 0.6  # ... or this share of it, whichever is shorter


@dataclass(frozen=True)
class Mark:
    """Where a window's rates were last taken: when, and the counters then."""

    at: float
    cpu: ThreadTimes
    steps: int
    prog_ns: int
    wrapper_steps: int

    @classmethod
    def of(cls, at: float, cpu: ThreadTimes, stats: TargetStats) -> Mark:
        return cls(at, cpu, stats.steps, stats.prog_ns_sum, stats.wrapper_steps)


@dataclass(frozen=True)
class Faults:
    """What the programs could not do between two readings."""

    read_errors: int = 0
    records_dropped: int = 0   # (the records were read from memory instead)


@dataclass
class ProcessAccount:
    """The counts, rates and attached time of one traced process."""

    cost_model: CostModel = field(default_factory=CostModel)
    counts_creations: bool = True        # the programs count tasks created (not 3.11)
    pending_at_start: int = 0            # tasks pending when tracing began
    estimate: StepEstimate = field(default_factory=StepEstimate)
    traced_s: float = 0.0
    attached_s: float = 0.0
    step_rate: float = 0.0               # steps/s and CPU s/s, with the probes attached
    cpu_rate: float = 0.0
    step_cost: float = 0.0               # seconds one captured step costs
    overhead_full: float = 0.0           # what full capture would cost, as a ratio
    measured: bool = False               # ... has been measured
    _mark: Mark | None = None
    _last: TargetStats | None = None
    _window_cpu: ThreadTimes | None = None   # thread CPU times at the window's start

    # -- readings -------------------------------------------------------------------
    def elapse(self, seconds: float, attached: bool) -> None:
        """``seconds`` more of tracing, with the probes attached or not."""
        self.traced_s += seconds
        if attached:
            self.attached_s += seconds

    def read(self, reading: Reading, attached: bool, pending: int) -> Faults:
        """A reading of the counters and CPU time; the stretch since the last one had
        the probes ``attached`` throughout.  ``pending``: tasks pending now (read from
        memory), from which tasks created are derived where not counted."""
        seen, self._last = self._last or TargetStats(), reading.stats
        self.estimate.read(reading, attached)
        if not self.counts_creations:   # created - finished = the change in pending
            c = self.estimate.counts
            c.created = max(c.created, c.finished + pending - self.pending_at_start)
        return Faults(max(reading.stats.read_errors - seen.read_errors, 0),
                      max(reading.stats.records_dropped - seen.records_dropped, 0))

    def probes_stayed(self, seconds: float) -> None:
        """Removing the probes took ``seconds``, all of it attached (the tick that
        follows counts its whole stretch as detached)."""
        self.attached_s += seconds

    def measure(self, now: float, cpu: ThreadTimes, stats: TargetStats,
                window_s: float) -> bool:
        """Step and CPU rates over the stretch since the last mark of this window, once
        it is long enough; True when the overhead of full capture was measured anew.
        A process not measured yet is measured over a short window (MEASURING_WINDOW)."""
        mark, self._mark = self._mark, Mark.of(now, cpu, stats)
        if mark is None:
            return False
        span = now - mark.at
        needed = (0.8 * MEASURING_WINDOW if not self.measured
                  else min(MAX_RATE_SPAN_S, RATE_SPAN_SHARE * window_s))
        if span < needed:
            self._mark = mark
            return False
        steps = stats.steps - mark.steps
        a = RATE_SMOOTHING if self.cpu_rate else 1.0   # the first measure stands alone
        self.step_rate = a * steps / span + (1 - a) * self.step_rate
        self.cpu_rate = a * cpu.since(mark.cpu) / span + (1 - a) * self.cpu_rate
        cost = self.cost_model.fixed
        if cost is None and steps > 0:
            measured = self.cost_model.per_step(
                (stats.prog_ns_sum - mark.prog_ns) / 1e9 / steps,
                (stats.wrapper_steps - mark.wrapper_steps) / steps,
                stats.created / max(stats.steps, 1))
            if measured is not None:
                cost = (a * measured + (1 - a) * self.step_cost if self.step_cost
                        else measured)
        if cost is not None:
            self.step_cost = cost
        self.overhead_full = full_overhead(self.step_rate, self.cpu_rate, self.step_cost)
        self.measured = True
        return True

    def restart_rates(self) -> None:
        """Rates are measured within one window: the next ``measure`` starts a mark."""
        self._mark = None

    # -- windows --------------------------------------------------------------------
    def open_window(self, cpu: ThreadTimes | None) -> None:
        """The probes are all in place: the estimate's window starts at ``cpu``."""
        self._window_cpu = cpu

    def close_window(self, now: float, cpu: ThreadTimes | None) -> tuple[float, float, float]:
        """The probes are about to go: the window's counts and CPU time join the
        estimate's ratio.  Returns the window's steps, CPU s and own CPU s."""
        window_cpu = cpu.since(self._window_cpu) if cpu and self._window_cpu else None
        self._window_cpu = None
        return self.estimate.close_window(now, self.step_cost, window_cpu)

    # -- what is exported -----------------------------------------------------------
    def capture_fraction(self, probed: bool) -> float:
        """The share of the traced time with the probes attached."""
        if self.traced_s:
            return self.attached_s / self.traced_s
        return 1.0 if probed else 0.0

    def overhead(self, duty: float) -> float:
        """What capture costs the process at ``duty``, as a ratio of its own CPU time."""
        return self.overhead_full * duty
