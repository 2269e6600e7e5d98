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
so that a changed workload is learned); it is used once its windows saw
``MIN_RATIO_CPU_S`` of CPU time (a window of an idle process sees a few cheap steps
-- its timers -- in a fraction of a millisecond: a burst counted at their ratio was
counted many times over).  It assumes the CPU cost of a step does not change much
with load; ``aiobpf_probe_hits_total`` and ``aiobpf_probes_attached_seconds_total``
are exported unscaled for anyone who wants their own estimate.  Pure: the daemon
feeds it readings of the BPF counters and of the CPU time.

CPU time is a noisy measure of work, though: on a shared machine a step's CPU cost
moves by 15-20 % from one second to the next (caches, other processes), while the
step rate of a load that waits for its work (requests, timers) does not.  So where a
process that is not CPU-bound (``CPU_BOUND``) spends, between windows, the CPU time
its last windows predict (``Regime``: their own CPU rate, within
``REGIME_TOLERANCE`` and one clock tick), the load is taken to be the same and the
windows' step rate is added instead; where it spends more or less (a burst, an idle
spell), the CPU time decides.  A load that changes by less than the tolerance is
followed at the next window.

A CPU-bound process is counted from its CPU time alone, and its step's CPU cost
moves too.  Measured on this project's VM: a CPU-bound loop's steps per CPU second
flipped between two levels ~40 % apart every second or few (other work on the
host, invisible in the guest), in proportions that drifted over minutes, which a
ratio over the last 15 minutes did not follow.  So the windows in which a process
was CPU-bound also make a ratio of their own that forgets fast
(``BOUND_HALF_LIFE_S``; each such window sees a tenth of a second of CPU time or
more, so a few make a ratio), and the stretches between windows in which it is
CPU-bound are counted at that one.  It follows drifts over minutes, not the flips:
a window samples one level, and a burst is counted at the mix of the last windows.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from aiobpf.bpf.abi import TargetStats
from aiobpf.exporters.state import StepCounts

RATIO_HALF_LIFE_S = 900.0   # a window's weight in the ratio halves in this much time
# ... and in the ratio of CPU-bound windows.  Chosen by replaying recorded loads
# (bench/estimate_replay.py): a bursty load's CPU-bound windows come every ~30 s;
# 30-120 s followed its drift about equally well, 900 s (the ratio above) did not.
BOUND_HALF_LIFE_S = 60.0
MIN_RATIO_CPU_S = 0.005     # a ratio is used once its windows saw this much CPU time
# The probes' estimated cost takes at most this share of a window's CPU time: where it
# would take more, the estimate of the cost decides the result more than the counts
# do (steps cheaper than the probes themselves, e.g. a queue ping-pong), and it is
# believed only this far.
MAX_PROBE_SHARE = 0.5
# A stretch between windows whose CPU time is within this share of what the last
# windows' CPU rate predicts (plus one clock tick of /proc's 10 ms: a process at a few
# percent of a CPU spends only a few ticks per reading) is the same load: the windows'
# step rate is added.  Chosen by replaying recorded loads through the estimate
# (bench/estimate_replay.py): with windows as noisy as the daemon's, 0.2 let noise end
# a steady load's regime too often, 0.35 followed bursty loads less well.
REGIME_TOLERANCE = 0.3
CPU_TICK_S = 0.01
REGIME_DECAY = 0.5   # an older window of the same regime weighs half as much
# A process busy this much of a CPU or more (in its windows) is bound by its CPU: its
# steps follow its CPU time, which contention takes from it, and the rate is never
# used (measured: a loop stepping as fast as it can, at 0.9 CPU s/s, was counted 15 %
# high at the rate of its windows while other processes took CPU from it).
CPU_BOUND = 0.5
REGIME_SPAN_S = 2.0  # ... and so is the CPU time of the last this many seconds (a
                     # process at 3 % of a CPU spends less than a tick per reading)


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
class Regime:
    """The load the last windows saw, while it stays the same: their steps, own CPU
    seconds and wall seconds, older windows weighing less (``REGIME_DECAY``)."""

    steps: float = 0.0
    cpu_s: float = 0.0
    span_s: float = 0.0
    tolerance: float | None = REGIME_TOLERANCE   # None: never the same load (CPU time only)

    def join(self, steps: float, cpu_s: float, span_s: float) -> None:
        """A window's counts; a window whose CPU rate differs from the regime's by more
        than the tolerance starts a new regime."""
        if span_s <= 0.0:
            return
        if not self.fits(cpu_s, span_s):
            self.steps = self.cpu_s = self.span_s = 0.0
        self.steps = REGIME_DECAY * self.steps + steps
        self.cpu_s = REGIME_DECAY * self.cpu_s + cpu_s
        self.span_s = REGIME_DECAY * self.span_s + span_s

    def fits(self, cpu_s: float, span_s: float) -> bool:
        """Whether ``cpu_s`` CPU seconds over ``span_s`` seconds is this regime's load."""
        if self.span_s <= 0.0 or self.tolerance is None or self.cpu_s >= CPU_BOUND * self.span_s:
            return False
        expected = self.cpu_s / self.span_s * span_s
        return abs(cpu_s - expected) <= self.tolerance * expected + CPU_TICK_S

    def steps_in(self, span_s: float) -> float:
        return self.steps / self.span_s * span_s if self.span_s > 0.0 else 0.0


@dataclass
class Ratio:
    """Counts per CPU second over windows: decayed sums, a window's weight halving
    every ``half_life_s`` seconds."""

    half_life_s: float
    counts: StepCounts = field(default_factory=StepCounts)
    cpu_s: float = 0.0
    at: float | None = None

    def join(self, counts: StepCounts, cpu_s: float, now: float) -> None:
        """A window's counts and own CPU seconds, closed at ``now``."""
        if self.at is not None:
            keep = 0.5 ** (max(now - self.at, 0.0) / self.half_life_s)
            decayed = StepCounts()
            decayed.add(self.counts, keep)
            self.counts, self.cpu_s = decayed, self.cpu_s * keep
        self.counts.add(counts)
        self.cpu_s += cpu_s
        self.at = now

    @property
    def ready(self) -> bool:
        """Its windows saw enough CPU time to go by."""
        return self.cpu_s >= MIN_RATIO_CPU_S


@dataclass
class StepEstimate:
    """The exported counts of one process: exact in windows, estimated between them."""

    counts: StepCounts = field(default_factory=StepCounts)
    hits: int = 0                                   # steps the probes saw (not scaled)
    _last: Reading | None = None
    _window: StepCounts = field(default_factory=StepCounts)   # the open window's counts
    _window_cpu_s: float = 0.0                                # ... and CPU time
    # the ratio over all windows, and over the windows in which the process was CPU-bound
    # (bound_half_life_s None: no ratio of its own, the estimate before it)
    bound_half_life_s: float | None = BOUND_HALF_LIFE_S
    _ratio: Ratio = field(default_factory=lambda: Ratio(RATIO_HALF_LIFE_S))
    _bound: Ratio | None = None
    _regime: Regime = field(default_factory=Regime)
    _window_from: float | None = None                         # the open window's start
    # (when, CPU s) of the readings since the last window, the last REGIME_SPAN_S of them
    _recent: deque[tuple[float, float]] = field(default_factory=deque)

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
            if self._window_from is None:
                self._window_from = last.at
                self._recent.clear()
            return delta
        trail = self._trail(last, reading)
        ratio, span = self._ratio, max(reading.at - last.at, 0.0)
        if not ratio.ready:
            return None
        if ratio.counts.steps > 0.0 and self._same_load(reading, cpu, span, trail):
            self.counts.add(ratio.counts, self._regime.steps_in(span) / ratio.counts.steps)
            return None
        if self._bound is not None and self._bound.ready and cpu >= CPU_BOUND * span > 0.0:
            ratio = self._bound
        self.counts.add(ratio.counts, cpu / ratio.cpu_s)
        return None

    def _trail(self, last: Reading, reading: Reading) -> tuple[float, float]:
        """Keep ``reading`` in the trail of readings between windows, and return the
        oldest within the last REGIME_SPAN_S seconds: (time, CPU seconds)."""
        recent = self._recent
        if not recent:
            recent.append((last.at, last.cpu_s))
        recent.append((reading.at, reading.cpu_s))
        while len(recent) > 2 and reading.at - recent[1][0] >= REGIME_SPAN_S:
            recent.popleft()
        return recent[0]

    def _same_load(self, reading: Reading, cpu: float, span: float,
                   trail: tuple[float, float]) -> bool:
        """Whether the last stretch (``cpu`` s over ``span`` s, up to ``reading``) and
        the last REGIME_SPAN_S seconds (from ``trail``) both spent what the regime
        predicts."""
        since, cpu_then = trail
        return (self._regime.fits(cpu, span)
                and (reading.at - since < REGIME_SPAN_S / 2
                     or self._regime.fits(reading.cpu_s - cpu_then, reading.at - since)))

    def close_window(self, now: float, step_cost: float, cpu_s: float | None = None
                     ) -> tuple[float, float, float]:
        """The probes were detached: what the window saw joins the ratio, with its CPU
        time (``cpu_s``, measured from the window's start; else the readings' ticks)
        less ``step_cost`` seconds per captured step.  Returns the window's steps, CPU
        seconds and own CPU seconds."""
        cpu = self._window_cpu_s if cpu_s is None else cpu_s
        own = max(cpu - self._window.steps * step_cost, (1.0 - MAX_PROBE_SHARE) * cpu)
        self._ratio.join(self._window, own, now)
        if self._window_from is not None:
            span = now - self._window_from
            if self.bound_half_life_s is not None and own >= CPU_BOUND * span > 0.0:
                if self._bound is None:
                    self._bound = Ratio(self.bound_half_life_s)
                self._bound.join(self._window, own, now)
            self._regime.join(self._window.steps, own, span)
        self._window_from = None
        seen = (self._window.steps, cpu, own)
        self._window, self._window_cpu_s = StepCounts(), 0.0
        return seen

    @property
    def estimating(self) -> bool:
        """Windows saw the process run: the gaps between windows are filled."""
        return self._ratio.ready

    def steps_per_cpu_second(self) -> float:
        """The ratio over all windows (0 until they saw the process run)."""
        ratio = self._ratio
        return ratio.counts.steps / ratio.cpu_s if ratio.ready else 0.0
