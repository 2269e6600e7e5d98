"""A profile: stacks and how many samples each got, with what the samples were."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiobpf.exporters.profile.stacks import Node, Stack

KINDS = ("task", "frame", "thread")
MAX_STACKS = 1_000_000   # stacks one document may carry (the daemon's reply to the CLI)


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

    def document(self) -> dict[str, Any]:
        """The profile as JSON values (how the daemon sends it to ``aiobpf profile``)."""
        return {"pid": self.pid, "mode": self.mode, "rate_hz": self.rate_hz,
                "samples": self.samples, "duration_s": self.duration_s,
                "stacks": [[[[n.kind, n.name, n.filename, n.line] for n in stack], count]
                           for stack, count in self.stacks.items()]}

    @classmethod
    def from_document(cls, doc: Any) -> Profile:
        """The profile ``document`` wrote; ValueError when ``doc`` is not one."""
        try:
            profile = cls(int(doc["pid"]), str(doc["mode"]), float(doc["rate_hz"]),
                          int(doc["samples"]), float(doc["duration_s"]))
            stacks = doc["stacks"]
            if not isinstance(stacks, list) or len(stacks) > MAX_STACKS:
                raise ValueError("stacks: not a list, or too long")
            for nodes, count in stacks:
                profile.add(tuple(_node(n) for n in nodes), int(count))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a profile document: {exc}") from None
        return profile


def _node(value: Any) -> Node:
    kind, name, filename, line = value
    if kind not in KINDS or not isinstance(name, str) or not isinstance(filename, str):
        raise ValueError(f"not a stack node: {value!r:.80}")
    return Node(kind, name, filename, int(line))
