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
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
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
