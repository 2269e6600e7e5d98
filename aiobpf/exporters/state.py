"""The daemon's published state: what it knows of each traced process, as plain data.

The daemon builds it (aiobpf.daemon.service, from memory reads and BPF counters) and
replaces it whole at each publication; the metrics exporter (``prometheus``) and the
metrics endpoint only read it.  Names in it are the target's, as read: exporters make
them safe where they show them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from aiobpf.bpf.abi import HIST_SLOTS
from aiobpf.safe_text import label


@dataclass
class SnapshotSummary:
    """What the gauges show of one memory read: exact at the time of that read."""

    pending: int = 0
    stack_depths: Counter[int] = field(default_factory=Counter)   # frames -> suspended tasks
    await_depths: Counter[int] = field(default_factory=Counter)   # awaiting tasks -> tasks
    sites: list[tuple[str, int]] = field(default_factory=list)    # top K, then (other)
    read_seconds: float = 0.0
    read_at: float = 0.0           # Unix time the read began


@dataclass
class StepCounts:
    """The BPF counters of one process; between capture windows, estimated."""

    steps: float = 0.0
    finished: float = 0.0
    created: float = 0.0
    step_hist: list[float] = field(default_factory=lambda: [0.0] * HIST_SLOTS)
    step_sum_ns: float = 0.0
    delay_hist: list[float] = field(default_factory=lambda: [0.0] * HIST_SLOTS)
    delay_sum_ns: float = 0.0

    def add(self, other: StepCounts, scale: float = 1.0) -> None:
        """Add ``other``'s counts, multiplied by ``scale``."""
        self.steps += other.steps * scale
        self.finished += other.finished * scale
        self.created += other.created * scale
        self.step_sum_ns += other.step_sum_ns * scale
        self.delay_sum_ns += other.delay_sum_ns * scale
        for i, n in enumerate(other.step_hist):
            self.step_hist[i] += n * scale
        for i, n in enumerate(other.delay_hist):
            self.delay_hist[i] += n * scale


@dataclass
class ProcessView:
    """Everything exported about one traced process (made by the daemon, read by scrapes)."""

    pid: int
    process: str
    python: str
    container: str
    capture: str                      # full | windowed | memory
    summary: SnapshotSummary | None
    counts: StepCounts
    probe_hits: int = 0               # step starts the probes saw (not scaled)
    capture_fraction: float = 0.0     # time with probes attached / time traced
    attached_seconds: float = 0.0     # time with probes attached
    overhead: float = 0.0             # estimated tracing overhead ratio
    step_cost: float = 0.0            # estimated seconds one captured step costs

    @property
    def labels(self) -> list[str]:
        """The per-process label values; all but the PID come from the target."""
        return [str(self.pid), label(self.process), label(self.python), label(self.container)]


@dataclass
class DaemonState:
    """What the exporter says about aiobpf itself."""

    views: list[ProcessView] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    last_scan: float = 0.0    # Unix time the last discovery scan ended (0: none yet)
    generation: int = 0       # +1 at each publication: what the endpoint's cache is keyed by
