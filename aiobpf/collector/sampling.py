"""Reading a process again and again at a steady rate: the samples of a profile.

Ticks are planned on a fixed grid (``start + i / rate``); a read that runs over one
or more ticks makes the sampler skip them rather than catch up in a burst, so the
effective rate is what the reads allow, never more than the rate asked."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def at_rate(read: Callable[[], T], rate_hz: float, duration_s: float,
            stopped: Callable[[], bool] = lambda: False) -> Iterator[tuple[float, T]]:
    """``read()`` every ``1 / rate_hz`` seconds for ``duration_s`` seconds (or until
    ``stopped()``); yields (monotonic time of the read, what it returned)."""
    period = 1.0 / rate_hz
    start = time.monotonic()
    end = start + duration_s
    tick = 0
    while not stopped():
        now = time.monotonic()
        if now >= end:
            return
        due = start + tick * period
        if due > now:
            time.sleep(min(due - now, end - now))
            continue
        yield now, read()
        tick = max(tick + 1, math.floor((time.monotonic() - start) / period) + 1)
