"""The daemon's own memory reads, paced to a share of one CPU (``read_budget``).

Each traced process is read every ``refresh_interval`` seconds while the reads of
all of them fit the budget.  When they do not, the processes whose reads are cheap
keep that interval and the costly ones share what is left equally: each is read
every ``its CPU seconds per read / its share`` seconds (water-filling).  A process
of 100,000 tasks, whose read takes about a second of CPU, is then read about every
70 s at the default budget (1.5 % of a CPU; with its scans and the rest the daemon
stays within 2 %) rather than every 5 s, and a host with hundreds of small
processes costs the same 1.5 %.  A process not read yet counts as free: its first
read (at discovery) measures it.

That first read comes with the examination of a new process (its files parsed, its
memory read once) and costs in proportion to its tasks, which a user can copy at no
cost to themselves (``fork``): ``FirstReads`` holds each user's examinations to the
same share of a CPU, after a burst.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def read_intervals(costs: Mapping[K, float], refresh: float, budget: float) -> dict[K, float]:
    """Seconds between reads of each process (key -> CPU seconds its last read took),
    each at least ``refresh``, so that the reads together cost at most ``budget`` of
    one CPU: ``sum(cost / interval) <= budget``."""
    intervals: dict[K, float] = {}
    left = budget
    ordered = sorted(costs.items(), key=lambda item: item[1])
    for i, (key, cost) in enumerate(ordered):
        share = left / (len(ordered) - i)   # an equal part of what is left
        if cost <= share * refresh:
            intervals[key] = refresh
            left -= cost / refresh
        else:   # this one and every costlier one: an equal share each
            for later, later_cost in ordered[i:]:
                intervals[later] = max(refresh, later_cost / share)
            break
    return intervals


# A user's new processes may be examined (their files parsed, their memory read a
# first time) at up to this many seconds' worth of read_budget at once; after that,
# at read_budget of one CPU: a user who forks a process of a million tasks over and
# over (a copy costs them nothing; a first read costs the daemon ~10 s) gets that.
FIRST_READS_BURST_S = 600.0
MAX_LEDGERS = 4096   # users remembered; those who owe nothing are forgotten first


@dataclass
class Ledger:
    """CPU seconds owed for examining one user's processes, paid back at ``rate``
    CPU seconds per second."""

    owed: float = 0.0
    at: float = 0.0

    def owed_at(self, now: float, rate: float) -> float:
        return max(self.owed - (now - self.at) * rate, 0.0)


class FirstReads:
    """Examinations of new processes, paced per user to ``budget`` of one CPU after a
    burst of ``FIRST_READS_BURST_S`` seconds' worth: one user's many processes put off
    only that user's next ones, never another's."""

    def __init__(self, budget: float) -> None:
        self.rate = budget
        self.burst = budget * FIRST_READS_BURST_S
        self._owed: dict[int, Ledger] = {}

    def allows(self, uid: int, now: float) -> bool:
        """Whether a new process of ``uid`` may be examined now."""
        ledger = self._owed.get(uid)
        return ledger is None or ledger.owed_at(now, self.rate) < self.burst

    def spend(self, uid: int, cpu_s: float, now: float) -> None:
        """An examination of a process of ``uid`` took ``cpu_s`` CPU seconds."""
        ledger = self._owed.get(uid)
        owed = ledger.owed_at(now, self.rate) if ledger is not None else 0.0
        if ledger is None and len(self._owed) >= MAX_LEDGERS:
            self._owed = {u: led for u, led in self._owed.items()
                          if led.owed_at(now, self.rate) > 0.0}
            while len(self._owed) >= MAX_LEDGERS:   # (as many users owing: the least goes)
                del self._owed[min(self._owed,
                                   key=lambda u: self._owed[u].owed_at(now, self.rate))]
        self._owed[uid] = Ledger(owed + cpu_s, now)
