"""A target's own count of its task steps (tests/targets/bursty.py prints it), for
comparing aiobpf's counts with the truth (tests and bench/bursty.py)."""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import IO


@dataclass
class StepLog:
    """A target's own count of its steps, from its ``STEPS <t> <n>`` lines."""

    times: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def follow(self, stream: IO[str]) -> threading.Thread:
        """Read ``stream`` in a thread until it ends."""
        def read() -> None:
            for line in stream:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "STEPS":
                    with self.lock:
                        self.times.append(float(parts[1]))
                        self.counts.append(int(parts[2]))
        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def at(self, t: float, wait: float = 1.0) -> float | None:
        """The count at monotonic time ``t``, interpolated (None: outside the log, after
        waiting up to ``wait`` s for the line after ``t``)."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and (not self.times or self.times[-1] < t):
            time.sleep(0.05)
        with self.lock:
            i = bisect.bisect_left(self.times, t)
            if i == 0 or i >= len(self.times):
                return None
            t0, t1 = self.times[i - 1], self.times[i]
            c0, c1 = self.counts[i - 1], self.counts[i]
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else float(c1)
