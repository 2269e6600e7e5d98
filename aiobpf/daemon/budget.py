"""The overhead budget: how much of each probed file's time its probes may stay attached.

Every captured step costs the traced process about ``probe_cost`` seconds (the uprobe
trap, the programs, the syscall hooks: measured, see aiobpf.collector.probe_cost).
Over a window with the probes attached, a process's step rate and CPU rate give the
overhead full capture would impose::

    overhead = steps/s * cost / (CPU s/s - steps/s * cost)

(the probes' cost is charged to the process's own CPU time, so it is taken out of
the denominator).  When that exceeds a third of the budget, the file's probes are
attached for ``window`` seconds out of every ``window / duty`` seconds, with
``duty = PLAN_SHARE * budget / overhead`` (the smallest duty of the file's processes,
since one uprobe serves every process of a file).  Planning for a third of the
budget leaves room for the estimate's error: measured against full capture
(``bench/daemon.py --tracers full``), the per-step cost was 0.8-1.5x the estimate
(up to 2x within windows: ``bench/daemon.py``'s in-phase view); one measurement put
the excess not in the process's system time (the trap and programs themselves) but
in its user time: a trap disturbs the caches of the interpreter's hot loop, which
the calibration, with a small working set, does not see.  Between windows, the
daemon adds the rates the last window saw for the time that passes: estimates
without bias while the rate is steady, which never run ahead of time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_CPU_RATE = 1e-3   # a process that sleeps: its few steps decide nothing
MIN_OWN_SHARE = 0.1   # when the model charges the probes nearly all CPU, it is off
MIN_DUTY = 0.0005     # a window at least every window/MIN_DUTY s: estimates need samples
PLAN_SHARE = 1 / 3    # plan for this share of the budget: room for the estimate's error


def full_overhead(step_rate: float, cpu_rate: float, probe_cost: float) -> float:
    """The overhead ratio full capture imposes, from rates measured with probes on."""
    tracer = step_rate * probe_cost
    own = max(cpu_rate - tracer, MIN_OWN_SHARE * cpu_rate, MIN_CPU_RATE)
    return tracer / own


def duty_for(overhead: float, budget: float) -> float:
    """The fraction of time probes may stay attached so as to stay within ``budget``."""
    if overhead <= budget:
        return 1.0
    return max(budget / overhead, MIN_DUTY)


@dataclass
class FileWindow:
    """The attach/detach schedule of one probed file."""

    window: float
    duty: float = 1.0
    attached: bool = True
    switch_at: float = 0.0         # when to attach or detach next (0: never)
    attached_at: float = 0.0       # when the probes were last attached
    overheads: dict[int, float] = field(default_factory=dict)  # pid -> full overhead

    def plan(self, budget: float) -> None:
        """Choose the duty from the latest estimates of the file's processes (a budget
        of 1, all of the process's CPU time, means no limit: full capture)."""
        worst = max(self.overheads.values(), default=0.0)
        self.duty = 1.0 if budget >= 1.0 else duty_for(worst, PLAN_SHARE * budget)

    def step(self, now: float) -> bool | None:
        """Advance the schedule; True: attach now, False: detach now, None: keep.

        The pause after a window is sized from how long the probes really stayed
        attached (the caller looks only every tick, so a window runs over), which
        keeps the attached fraction at the duty."""
        if self.duty >= 1.0:
            self.switch_at = 0.0
            return None if self.attached else True
        if self.switch_at == 0.0:
            self.switch_at = now + (self.window if self.attached else 0.0)
            self.attached_at = now
        if now < self.switch_at:
            return None
        if self.attached:
            attached_for = max(now - self.attached_at, self.window)
            self.switch_at = now + attached_for * (1.0 / self.duty - 1.0)
            return False
        self.switch_at = now + self.window
        self.attached_at = now
        return True

    def detach_took(self, seconds: float) -> None:
        """The detach took ``seconds`` (closing a uprobe waits for the kernel's grace
        periods: ~250 ms here), with probes still in place: attached time, which the
        pause after the window grows to match."""
        if self.duty < 1.0:
            self.switch_at += seconds * (1.0 / self.duty - 1.0)
