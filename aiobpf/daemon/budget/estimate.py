"""A process's step counts while its probes are attached only in windows.

In a window the BPF counters are exact.  Between windows they see nothing, and the
counts are estimated from the process's CPU time, which ``/proc`` gives for free and
which follows what the process does: each window measures how many steps (finished
tasks, histogram counts, duration sums) the process makes per second of its own CPU
time, and between windows the CPU time the process spends, times that ratio, is
added.  A process that is idle spends none and gains nothing; a burst between two
windows is counted as it happens, at the ratio of the windows before.

Its own CPU time in a window is what it spent (to the nanosecond: the threads'
schedstat) less what the probes took, the captured steps times their estimated cost
(aiobpf.collector.probe_cost, measured per probe site).  That estimate is the weak
point: its error moves the ratio by the probes' share of a step's CPU time -- little
for steps of tens of microseconds, much for steps cheaper than the probes themselves
(``MAX_PROBE_SHARE`` bounds it).  (User time would leave the probes out, but
the kernel reports it scaled by the process's lifetime user share, so a window's
user time grows with the probes' system time.)  Between windows,
``/proc/PID/stat``'s ticks are read: they count the exited threads too, and add up
exactly over any range.

The ratio is a sum over windows, each weighing by the CPU time it saw (a window of
an idle process decides nothing), older ones less (half-life ``RATIO_HALF_LIFE_S``,
so that a changed workload is learned).  It assumes the CPU cost of a step does not
change much with load; ``aiobpf_probe_hits_total`` and
``aiobpf_probes_attached_seconds_total`` are exported unscaled for anyone who wants
their own estimate.  Pure: the daemon feeds it readings of the BPF counters and of
the CPU time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiobpf.bpf.abi import TargetStats
from aiobpf.exporters.state import StepCounts

RATIO_HALF_LIFE_S = 900.0   # a window's weight in the ratio halves in this much time
# The probes' estimated cost takes at most this share of a window's CPU time: where it
# would take more, the estimate of the cost decides the result more than the counts
# do (steps cheaper than the probes themselves, e.g. a queue ping-pong), and it is
# believed only this far.
MAX_PROBE_SHARE = 0.5


@dataclass(frozen=True)
class Reading:
    """One look at a process: when, its CPU time, its BPF counters."""

    at: float          # monotonic seconds
    cpu_s: float       # CPU seconds of the process (/proc/PID/stat: user + system)
    stats: TargetStats


def counted(now: TargetStats, before: TargetStats) -> StepCounts:
    """What the programs counted between two readings of the same process."""
    if now.steps < before.steps:   # counters started again (the process was re-added)
        return StepCounts()
    return StepCounts(
        steps=float(now.steps - before.steps),
        finished=float(now.finished - before.finished),
        created=float(now.created - before.created),   # (0 where not counted: 3.11)
        step_hist=[float(a - b) for a, b in zip(now.step_hist, before.step_hist, strict=True)],
        step_sum_ns=float(now.step_ns_sum - before.step_ns_sum),
        delay_hist=[float(a - b) for a, b in zip(now.delay_hist, before.delay_hist,
                                                 strict=True)],
        delay_sum_ns=float(now.delay_ns_sum - before.delay_ns_sum),
    )


@dataclass
class StepEstimate:
    """The exported counts of one process: exact in windows, estimated between them."""

    counts: StepCounts = field(default_factory=StepCounts)
    hits: int = 0                                   # steps the probes saw (not scaled)
    _last: Reading | None = None
    _window: StepCounts = field(default_factory=StepCounts)   # the open window's counts
    _window_cpu_s: float = 0.0                                # ... and CPU time
    _ratio: StepCounts = field(default_factory=StepCounts)    # decayed sums over windows
    _ratio_cpu_s: float = 0.0
    _folded_at: float | None = None

    def read(self, reading: Reading, attached: bool) -> StepCounts | None:
        """Account the stretch since the last reading, during which the probes were
        ``attached`` throughout (the caller reads right before attaching or detaching).
        Returns what the programs counted, when attached."""
        last, self._last = self._last, reading
        if last is None:
            return None
        cpu = max(reading.cpu_s - last.cpu_s, 0.0)
        if attached:
            delta = counted(reading.stats, last.stats)
            self.counts.add(delta)
            self.hits += int(delta.steps)
            self._window.add(delta)
            self._window_cpu_s += cpu
            return delta
        if self._ratio_cpu_s > 0.0:
            self.counts.add(self._ratio, cpu / self._ratio_cpu_s)
        return None

    def close_window(self, now: float, step_cost: float, cpu_s: float | None = None
                     ) -> tuple[float, float, float]:
        """The probes were detached: what the window saw joins the ratio, with its CPU
        time (``cpu_s``, measured from the window's start; else the readings' ticks)
        less ``step_cost`` seconds per captured step.  Returns the window's steps, CPU
        seconds and own CPU seconds."""
        cpu = self._window_cpu_s if cpu_s is None else cpu_s
        own = max(cpu - self._window.steps * step_cost, (1.0 - MAX_PROBE_SHARE) * cpu)
        if self._folded_at is not None:
            keep = 0.5 ** (max(now - self._folded_at, 0.0) / RATIO_HALF_LIFE_S)
            decayed = StepCounts()
            decayed.add(self._ratio, keep)
            self._ratio, self._ratio_cpu_s = decayed, self._ratio_cpu_s * keep
        self._ratio.add(self._window)
        self._ratio_cpu_s += own
        self._folded_at = now
        seen = (self._window.steps, cpu, own)
        self._window, self._window_cpu_s = StepCounts(), 0.0
        return seen

    @property
    def estimating(self) -> bool:
        """A window saw the process run: the gaps between windows are filled."""
        return self._ratio_cpu_s > 0.0

    def steps_per_cpu_second(self) -> float:
        """The ratio estimates use (0 until a window saw the process run)."""
        return self._ratio.steps / self._ratio_cpu_s if self._ratio_cpu_s > 0 else 0.0
