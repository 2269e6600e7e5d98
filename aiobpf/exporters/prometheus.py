"""Prometheus metrics of traced processes: what each family means and how snapshots and
BPF counters become its samples.

Per-process series carry ``pid``, ``process``, ``python`` and ``container`` labels and
nothing unbounded: no task names or ids; await sites are limited to the top K per
process, the rest summed under ``site="(other)"``.  Every label value a target
controls goes through ``safe_text.label``: valid UTF-8, control characters escaped,
at most 128 characters (256 for sites).  A process therefore exports at
most ``SERIES_FIXED + top_sites + 1`` series (``series_cap``).
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from aiobpf import __version__
from aiobpf.bpf.abi import HIST_SLOTS
from aiobpf.collector.model import Snapshot, Task
from aiobpf.exporters.sites import APPLICATION, await_site
from aiobpf.safe_text import label

LABELS = ("pid", "process", "python", "container")
STACK_DEPTH_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32)
AWAIT_DEPTH_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 12, 16)
# Bucket edges of the time histograms, 2^12 ns (4 us) to 2^36 ns (69 s), one per two of
# the BPF histograms' log2 slots (fewer series per process, cheaper scrapes).
TIME_EDGES = range(12, 37, 2)
OTHER_SITE = "(other)"
# Series per process besides the await sites (buckets included).
SERIES_FIXED = (1 + (len(STACK_DEPTH_BUCKETS) + 3) + (len(AWAIT_DEPTH_BUCKETS) + 3)
                + 3 + 2 * (len(TIME_EDGES) + 3) + 6 + 1)


def series_cap(top_sites: int) -> int:
    """The most series one traced process can export."""
    return SERIES_FIXED + top_sites + 1


@dataclass
class SnapshotSummary:
    """What the gauges show of one memory read: exact at the time of that read."""

    pending: int = 0
    stack_depths: Counter[int] = field(default_factory=Counter)   # frames -> suspended tasks
    await_depths: Counter[int] = field(default_factory=Counter)   # awaiting tasks -> tasks
    sites: list[tuple[str, int]] = field(default_factory=list)    # top K, then (other)
    read_seconds: float = 0.0


def _depths_of(first: dict[int, int | None]) -> dict[int, int]:
    """For each task, the tasks between it and its root, following first awaiters
    (``first``: task -> its first awaiting task, None for a root); linear in the tasks,
    however long the chains (a cycle counts from where it is entered)."""
    depth: dict[int, int] = {}
    for start in first:
        path: list[int] = []
        on_path: set[int] = set()
        node: int | None = start
        while node is not None and node not in depth and node in first and node not in on_path:
            path.append(node)
            on_path.add(node)
            node = first[node]
        base = depth.get(node, -1) if node is not None and node not in on_path else -1
        for i, tid in enumerate(reversed(path)):
            depth[tid] = base + 1 + i
    return depth


class Summarizer:
    """A ``SnapshotSummary`` built task by task (``Collector.snapshot(sink=...add)``).
    Of each task only its id and its first awaiting task's id are kept (16 bytes, in
    arrays), so a read of a process with hundreds of thousands of tasks never holds
    them all; the await chains are followed through the tasks that await others."""

    def __init__(self, top_sites: int, library: re.Pattern[str] | None = APPLICATION) -> None:
        self.top_sites = top_sites
        self.library = library          # frames that are not await sites (``sites``)
        self.pending = 0
        self.stack_depths: Counter[int] = Counter()
        self.sites: Counter[str] = Counter()
        self._ids = array("Q")
        self._firsts = array("Q")                      # 0: awaited by no task
        self._several: dict[int, tuple[int, ...]] = {}  # tasks awaited by more than one

    def add(self, task: Task) -> None:
        self.pending += 1
        if task.state == "pending" and task.frames:
            self.stack_depths[len(task.frames)] += 1
            site = await_site(task, self.library)
            if site is not None:
                self.sites[site] += 1
        awaiting = [a.id for a in task.awaited_by if a.is_task]
        self._ids.append(task.id)
        self._firsts.append(awaiting[0] if awaiting else 0)
        if len(awaiting) > 1:
            self._several[task.id] = tuple(awaiting)

    def _await_depths(self) -> Counter[int]:
        """Tasks by the length of their chain of first awaiters.  An awaiter that is no
        longer a task (it finished during the read) awaits nothing, as
        ``Collector.snapshot`` would have said."""
        awaiters = set(self._firsts)
        for several in self._several.values():
            awaiters.update(several)
        awaiters.discard(0)
        present = {tid for tid in self._ids if tid in awaiters}

        def first(tid: int, awaiter: int) -> int | None:
            if tid in self._several:
                return next((a for a in self._several[tid] if a in present), None)
            return awaiter if awaiter in present else None

        depth = _depths_of({tid: first(tid, a) for tid, a in zip(self._ids, self._firsts,
                                                                 strict=True) if tid in present})
        out: Counter[int] = Counter()
        for tid, awaiter in zip(self._ids, self._firsts, strict=True):
            if tid in depth:
                out[depth[tid]] += 1
            else:
                up = first(tid, awaiter)
                out[0 if up is None else depth[up] + 1] += 1
        return out

    def finish(self, read_seconds: float) -> SnapshotSummary:
        top = self.sites.most_common(self.top_sites)
        rest = sum(self.sites.values()) - sum(n for _, n in top)
        if rest:
            top.append((OTHER_SITE, rest))
        depths = self._await_depths()
        self._ids, self._firsts, self._several = array("Q"), array("Q"), {}
        return SnapshotSummary(pending=self.pending, stack_depths=self.stack_depths,
                               await_depths=depths, sites=top, read_seconds=read_seconds)


def summarize(snapshot: Snapshot, top_sites: int,
              library: re.Pattern[str] | None = APPLICATION) -> SnapshotSummary:
    summarizer = Summarizer(top_sites, library)
    for task in snapshot.tasks:
        summarizer.add(task)
    return summarizer.finish(snapshot.duration_s)


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


def _depth_buckets(counts: Counter[int], bounds: tuple[int, ...]) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound in bounds:
        total = sum(n for d, n in counts.items() if d <= bound)
        out.append((str(bound), float(total)))
    out.append(("+Inf", float(sum(counts.values()))))
    return out


def _time_buckets(hist: list[float]) -> list[tuple[str, float]]:
    """log2 slots (slot k: [2^k, 2^(k+1)) ns) as cumulative buckets in seconds: bucket
    le=2^e ns counts the slots below e."""
    out = []
    for edge in TIME_EDGES:
        out.append((f"{2.0 ** edge / 1e9:.9g}", float(sum(hist[:edge]))))
    out.append(("+Inf", float(sum(hist))))
    return out


# attribute, family class, name, help, extra label of the per-process families
_FAMILIES = (
    ("info", GaugeMetricFamily, "aiobpf_process_info",
     "A traced process; capture is full, windowed or memory.", "capture"),
    ("pending", GaugeMetricFamily, "aiobpf_tasks_pending",
     "Pending asyncio tasks (memory read).", None),
    ("stack", GaugeHistogramMetricFamily, "aiobpf_task_stack_depth",
     "Coroutine frames of each suspended task's stack (memory read).", None),
    ("await_", GaugeHistogramMetricFamily, "aiobpf_task_await_depth",
     "Tasks between each pending task and the root of its await chain (memory read).", None),
    ("created", CounterMetricFamily, "aiobpf_tasks_created",
     "Tasks created since tracing began, eager ones included (counted at Task.__init__ "
     "on 3.12+, estimated between capture windows; on 3.11 derived from finished tasks "
     "and the change in pending ones).", None),
    ("finished", CounterMetricFamily, "aiobpf_tasks_finished",
     "Tasks whose last step aiobpf saw end (estimate).", None),
    ("steps", CounterMetricFamily, "aiobpf_task_steps",
     "Task steps (estimated between capture windows).", None),
    ("step_time", HistogramMetricFamily, "aiobpf_task_step_duration_seconds",
     "Duration of task steps: a long step is an event loop blocked.", None),
    ("delay", HistogramMetricFamily, "aiobpf_task_wakeup_delay_seconds",
     "From the event loop waking to a task's step starting: loop lag.", None),
    ("sites", GaugeMetricFamily, "aiobpf_suspended_tasks",
     "Suspended tasks by await site (innermost frame of the application, else of a "
     "library), top K per process.", "site"),
    ("fraction", GaugeMetricFamily, "aiobpf_capture_fraction",
     "Fraction of the time since tracing began that the process's probes were attached "
     "(1: full capture).", None),
    ("attached", CounterMetricFamily, "aiobpf_probes_attached_seconds",
     "Seconds the process's probes were attached; its rate() is the attached fraction "
     "over any range.", None),
    ("overhead", GaugeMetricFamily, "aiobpf_estimated_overhead_ratio",
     "Estimated CPU aiobpf's probes cost the process, as a fraction of its own.", None),
    ("step_cost", GaugeMetricFamily, "aiobpf_step_cost_seconds",
     "Estimated CPU time one captured step costs the process (uprobe trap, programs, "
     "syscall hooks).", None),
    ("hits", CounterMetricFamily, "aiobpf_probe_hits",
     "Step starts seen by the probes (not scaled).", None),
    ("read_time", GaugeMetricFamily, "aiobpf_snapshot_read_seconds",
     "Duration of the last memory read.", None),
)


class Families:
    """The metric families of one scrape, filled process by process."""

    def __init__(self) -> None:
        self.by_key: dict[str, Any] = {
            key: family(name, documentation, labels=[*LABELS, extra] if extra else list(LABELS))
            for key, family, name, documentation, extra in _FAMILIES}

    def add(self, view: ProcessView) -> None:
        lab = view.labels
        f = self.by_key
        f["info"].add_metric([*lab, view.capture], 1)
        f["fraction"].add_metric(lab, view.capture_fraction)
        f["attached"].add_metric(lab, view.attached_seconds)
        f["overhead"].add_metric(lab, view.overhead)
        if view.capture != "memory":   # without probes, step counts are unknown, not 0
            c = view.counts
            f["created"].add_metric(lab, c.created)
            f["finished"].add_metric(lab, c.finished)
            f["steps"].add_metric(lab, c.steps)
            f["step_time"].add_metric(lab, _time_buckets(c.step_hist), c.step_sum_ns / 1e9)
            f["delay"].add_metric(lab, _time_buckets(c.delay_hist), c.delay_sum_ns / 1e9)
            f["hits"].add_metric(lab, view.probe_hits)
            f["step_cost"].add_metric(lab, view.step_cost)
        s = view.summary
        if s is None:
            return
        f["pending"].add_metric(lab, s.pending)
        f["stack"].add_metric(lab, _depth_buckets(s.stack_depths, STACK_DEPTH_BUCKETS),
                           sum(d * n for d, n in s.stack_depths.items()))
        f["await_"].add_metric(lab, _depth_buckets(s.await_depths, AWAIT_DEPTH_BUCKETS),
                            sum(d * n for d, n in s.await_depths.items()))
        for site, n in s.sites:
            f["sites"].add_metric([*lab, site], n)
        f["read_time"].add_metric(lab, s.read_seconds)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self.by_key.values())


@dataclass
class DaemonState:
    """What the exporter says about aiobpf itself."""

    views: list[ProcessView] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    last_scan: float = 0.0    # Unix time the last discovery scan ended (0: none yet)
    generation: int = 0       # +1 at each publication: what the endpoint's cache is keyed by


class MetricsCollector(Collector):
    """A prometheus_client collector over the daemon's latest state (no work at scrape)."""

    def __init__(self, state: Callable[[], DaemonState]) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        state = self._state()
        yield InfoMetricFamily("aiobpf_build", "aiobpf's version.", value={"version": __version__})
        attached = GaugeMetricFamily("aiobpf_attached_processes", "Processes traced now.")
        attached.add_metric([], len(state.views))
        yield attached
        errors = CounterMetricFamily("aiobpf_errors", "Errors by kind.", labels=["kind"])
        for kind, n in sorted(state.errors.items()):
            errors.add_metric([kind], n)
        yield errors
        scanned = GaugeMetricFamily(
            "aiobpf_last_scan_timestamp_seconds",
            "Unix time the daemon's last discovery scan ended: it advances every "
            "scan_interval while the daemon's loop is healthy.")
        scanned.add_metric([], state.last_scan)
        yield scanned
        families = Families()
        for view in state.views:
            families.add(view)
        yield from families
