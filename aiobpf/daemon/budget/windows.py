"""Capture windows: when each probed file's probes are attached, at the duty its
processes' measured overhead allows.

When full capture would exceed a third of the budget (``PLAN_SHARE``), a file's
probes are attached for ``window`` seconds out of every ``window / duty`` seconds,
with ``duty = PLAN_SHARE * budget / overhead`` (the smallest duty of the file's
processes, since one uprobe serves every process of a file).  Planning for a third of
the budget leaves room for the estimate's error: measured against full capture
(``bench/daemon.py --tracers full``), the per-step cost was 0.8-1.5x the estimate
(up to 2x within windows: ``bench/daemon.py``'s in-phase view); one measurement put
the excess not in the process's system time (the trap and programs themselves) but
in its user time: a trap disturbs the caches of the interpreter's hot loop, which
the calibration, with a small working set, does not see.  The pauses between
windows vary (``PAUSE_SPREAD``) around the length the duty asks for, along a sequence
that never repeats, so that windows sample a load that comes and goes at any period
without bias; the attached fraction stays at the duty.

A process is held to the budget from its discovery on: until its cost has been
measured it counts at ``PRIOR_OVERHEAD`` (as costly as full capture may be), so a
file with a process not yet measured is windowed, and the window that measures it is
short (``MEASURING_WINDOW``: rates over one tick of the daemon's loop).  The pause
after it is sized from the measurement, or from the prior when none came in; a
process that measures within the budget is captured in full at once (its probes
stay on).  A process that joins a file during a pause waits for the file's next
window: the pause pays for the windows of the file's other processes.

A dump (``aiobpf ps|pstree PID --capture bpf`` through the daemon) may open a window
early and hold it while it reads (``open_for_dump``): the pause it skipped is added
to the pause after that window, and no early window skips more than one pause (with
what is still owed): the probes stay attached ``duty`` of the time, give or take a
window.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

MIN_DUTY = 0.0005     # a window at least every window/MIN_DUTY s: estimates need samples
PLAN_SHARE = 1 / 3    # plan for this share of the budget: room for the estimate's error
PRIOR_OVERHEAD = 2.0  # a process not yet measured: full capture of the costliest steps
                      # (a queue ping-pong pays 80-104% here), with room to spare
MEASURING_WINDOW = 0.15   # s: a window that measures a new process (rates over a tick)
MEASURE_RETRY = 0.05  # s: a measuring window waits this much more for its measurement
MEASURE_LIMIT = 1.0   # s: ... and closes after this long even without one
PAUSE_SPREAD = 0.5    # a pause lasts (1 +- this) times what the duty asks for
PAUSE_STEP = (math.sqrt(5) - 1) / 2   # the steps of the pauses' sequence: never periodic


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
    attached_at: float = 0.0       # when the probes were last attached (or placed)
    length: float = 0.0            # the planned length of the open window
    pause: float = 0.0             # the length of the last pause planned
    held_until: float = 0.0        # a dump holds the probes attached until then
    ahead: float = 0.0             # s of pause skipped by a window a dump opened early
    # pid -> overhead of full capture; None: not measured yet (counts as the prior)
    overheads: dict[int, float | None] = field(default_factory=dict)
    # where the pauses' sequence stands (a random start: files do not pause in step)
    phase: float = field(default_factory=random.random)

    @property
    def measuring(self) -> bool:
        """Some process of the file has not been measured yet."""
        return any(overhead is None for overhead in self.overheads.values())

    def worst_overhead(self) -> float:
        """The costliest process's overhead, the ones not measured yet at the prior."""
        return max((PRIOR_OVERHEAD if overhead is None else overhead
                    for overhead in self.overheads.values()), default=0.0)

    def plan(self, budget: float) -> None:
        """Choose the duty from the latest estimates of the file's processes (a budget
        of 1, all of the process's CPU time, means no limit: full capture)."""
        self.duty = 1.0 if budget >= 1.0 else duty_for(self.worst_overhead(),
                                                       PLAN_SHARE * budget)

    def step(self, now: float) -> bool | None:
        """Advance the schedule; True: attach now, False: detach now, None: keep.

        The pause after a window is sized from how long the probes really stayed
        attached (the caller looks only every tick, so a window runs over), which
        keeps the attached fraction at the duty.  A window that measures a process
        waits for the measurement (up to ``MEASURE_LIMIT``)."""
        if self.duty >= 1.0:
            self.switch_at = 0.0
            return None if self.attached else True
        if self.switch_at == 0.0:          # windows begin: the probes are on or due
            if not self.attached:
                self.switch_at = now
            else:                          # (a new file's probes: since they were placed)
                self._open(max(now, self.attached_at))
        if now < self.switch_at:
            return None
        if self.attached:
            if now < self.held_until:      # a dump is reading the records
                self.switch_at = self.held_until
                return None
            if self.measuring and now - self.attached_at < MEASURE_LIMIT:
                self.switch_at = now + MEASURE_RETRY
                return None
            attached_for = max(now - self.attached_at, self.length)
            self.pause = attached_for * (1.0 / self.duty - 1.0) * self._spread()
            self.switch_at = now + self.pause + self.ahead
            self.ahead = 0.0
            return False
        self._open(now)
        return True

    def _spread(self) -> float:
        """The next pause's factor: evenly spread over 1 +- PAUSE_SPREAD, mean 1 (a
        golden-ratio sequence: its running mean comes close to 1 within a few pauses)."""
        self.phase = (self.phase + PAUSE_STEP) % 1.0
        return 1.0 + PAUSE_SPREAD * (2.0 * self.phase - 1.0)

    def open_for_dump(self, now: float, until: float) -> str | None:
        """A dump asks for the probes now, held until ``until``: None when they are on
        or the next ``step`` attaches them, else why the budget refuses.  The pause an
        early window skips is added to the pause after it, and at most one pause is
        taken in advance: over time the probes stay attached ``duty`` of the time, and
        the held time is attached time (the pause after the window grows with it)."""
        if self.duty < 1.0 and not self.attached:
            skipped = max(self.switch_at - now, 0.0)
            if self.ahead + skipped > max(self.pause, self.window * (1.0 / self.duty - 1.0)):
                return (f"the overhead budget refuses an early window: the probes of this "
                        f"file are attached {100 * self.duty:.2g}% of the time, and the next "
                        f"window opens in {skipped:.0f} s")
            self.ahead += skipped
            self.switch_at = now
        self.held_until = max(self.held_until, until)
        return None

    def _open(self, now: float) -> None:
        """A window starts now: a short one when it is to measure a new process."""
        self.length = MEASURING_WINDOW if self.measuring else self.window
        self.switch_at = now + self.length
        self.attached_at = now

    def detach_took(self, seconds: float) -> None:
        """The detach took ``seconds`` (closing a uprobe waits for the kernel's grace
        periods: ~250 ms here), with probes still in place: attached time, which the
        pause after the window grows to match."""
        if self.duty < 1.0:
            self.switch_at += seconds * (1.0 / self.duty - 1.0)
            self.pause += seconds * (1.0 / self.duty - 1.0)


def next_switch(windows: list[FileWindow]) -> float | None:
    """The earliest time a window is due to open or close (None: none is planned)."""
    return min((w.switch_at for w in windows if w.switch_at), default=None)
