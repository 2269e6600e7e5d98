"""A profile: stacks and how many samples each got, with what the samples were."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from aiobpf.exporters.profile.stacks import Stack


@dataclass
class Profile:
    """Samples of one process, aggregated by stack.

    ``mode``: ``wall`` (at each sample every leaf task's async stack counts once,
    suspended or running) or ``cpu``; ``rate_hz``: the rate asked; ``samples``: the
    samples taken; ``duration_s``: from the first to the last."""

    pid: int
    mode: str
    rate_hz: float
    samples: int = 0
    duration_s: float = 0.0
    stacks: Counter[Stack] = field(default_factory=Counter)

    @property
    def effective_rate_hz(self) -> float:
        """Samples per second actually taken (at most the rate asked)."""
        if self.samples < 2 or self.duration_s <= 0:
            return 0.0
        return (self.samples - 1) / self.duration_s

    @property
    def period_ns(self) -> int:
        """The time one sample stands for, in nanoseconds."""
        rate = self.effective_rate_hz or self.rate_hz
        return round(1e9 / rate) if rate > 0 else 0

    def add(self, stack: Stack, count: int = 1) -> None:
        if stack:
            self.stacks[stack] += count
