"""Prometheus metrics of traced processes: what each family means and how snapshots and
BPF counters become its samples.

Per-process series carry ``pid``, ``process``, ``python`` and ``container`` labels and
nothing unbounded: no task names or ids; await sites are limited to the top K per
process, the rest summed under ``site="(other)"``.  Every label value a target
controls goes through ``safe_text.label``: valid UTF-8, control characters escaped,
at most 128 characters (256 for sites).  A process therefore exports at most
``metrics.series_cap(top_sites)`` series.  What each family is (name, type, help,
labels, buckets) is the table in ``exporters.metrics``.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
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
from aiobpf.collector.model import Frame, Parked, Snapshot, Task
from aiobpf.exporters.metrics import (
    AWAIT_DEPTH_BUCKETS,
    BY_KEY,
    FAMILIES,
    STACK_DEPTH_BUCKETS,
    TIME_EDGES,
)
from aiobpf.exporters.sites import APPLICATION, Sites
from aiobpf.exporters.state import DaemonState, ProcessView, SnapshotSummary

OTHER_SITE = "(other)"
_CLASSES: dict[str, Any] = {
    "gauge": GaugeMetricFamily, "counter": CounterMetricFamily, "info": InfoMetricFamily,
    "histogram": HistogramMetricFamily, "gaugehistogram": GaugeHistogramMetricFamily}


def family(key: str) -> Any:
    """An empty metric family of the table (``exporters.metrics``) to add samples to."""
    spec = BY_KEY[key]
    return _CLASSES[spec.type](spec.name, spec.documentation, labels=spec.all_labels)


def _depths_of(first: dict[int, int | None]) -> dict[int, int]:
    """For each task, the tasks between it and its root, following first awaiters
    (``first``: task -> its first awaiting task, None for a root); linear in the tasks,
    however long the chains.  A cycle counts from where it is entered, by walks taken
    from the lowest id up: the order the tasks were read in does not change the counts."""
    depth: dict[int, int] = {}
    for start in sorted(first):
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
        # ("L": 8 bytes on Linux's LP64; CPython converts an int to it digit by digit,
        # to "Q" through a byte array)
        self._ids = array("L")
        self._firsts = array("L")                      # 0: awaited by no task
        self._several: dict[int, tuple[int, ...]] = {}  # tasks awaited by more than one
        self._sites = Sites(library)

    def add(self, task: Task) -> None:
        self.pending += 1
        if task.frames and task.state == "pending":
            self._count_stack(task.frames, 1)
        self._ids.append(task.id)
        awaited_by = task.awaited_by
        if len(awaited_by) == 1:   # most tasks: no list made
            self._firsts.append(awaited_by[0].id if awaited_by[0].is_task else 0)
            return
        awaiting = [a.id for a in awaited_by if a.is_task]
        self._firsts.append(awaiting[0] if awaiting else 0)
        if len(awaiting) > 1:
            self._several[task.id] = tuple(awaiting)

    def add_parked(self, parked: Parked) -> None:
        """``add`` of each of many suspended tasks (``Collector.snapshot(parked=...)``):
        each distinct stack is classified once, however many tasks it holds."""
        self.pending += len(parked.ids)
        self._ids.extend(parked.ids)
        self._firsts.extend(parked.firsts)
        for node, n in Counter(parked.nodes).items():
            if node:
                self._count_stack(parked.stacks.frames_of(node), n)

    def _count_stack(self, frames: list[Frame], n: int) -> None:
        """Count ``n`` suspended tasks of one stack: its depth and its await site."""
        self.stack_depths[len(frames)] += n
        site = self._sites.of(frames)
        if site is not None:
            self.sites[site] += n

    def _await_depths(self) -> Counter[int]:
        """Tasks by the length of their chain of first awaiters.  An awaiter that is no
        longer a task (it finished during the read) awaits nothing, as
        ``Collector.snapshot`` would have said.

        Tasks that await others, or are awaited by several, are counted one by one; the
        rest (most tasks: the leaves) by their first awaiter, whose depth gives theirs."""
        by_first = Counter(self._firsts)
        awaiters = set(by_first)
        for several in self._several.values():
            awaiters.update(several)
        awaiters.discard(0)
        present = awaiters.intersection(self._ids)
        one_by_one = present.union(self._several)
        pairs = [(tid, a) for tid, a in zip(self._ids, self._firsts, strict=True)
                 if tid in one_by_one]

        def first(tid: int, awaiter: int) -> int | None:
            if tid in self._several:
                return next((a for a in self._several[tid] if a in present), None)
            return awaiter if awaiter in present else None

        depth = _depths_of({tid: first(tid, a) for tid, a in pairs if tid in present})
        out: Counter[int] = Counter()
        for tid, awaiter in pairs:
            known = depth.get(tid)
            if known is None:
                up = first(tid, awaiter)
                known = 0 if up is None else depth[up] + 1
            out[known] += 1
        by_first.subtract(awaiter for _, awaiter in pairs)
        for awaiter, n in by_first.items():
            if n:
                out[depth[awaiter] + 1 if awaiter in present else 0] += n
        return out

    def finish(self, snapshot: Snapshot) -> SnapshotSummary:
        """The summary of the tasks added, read by ``snapshot`` (its time and duration)."""
        # (ties by name: the order tasks were read in does not choose the series)
        top = sorted(self.sites.items(), key=lambda site: (-site[1], site[0]))[:self.top_sites]
        rest = sum(self.sites.values()) - sum(n for _, n in top)
        if rest:
            top.append((OTHER_SITE, rest))
        depths = self._await_depths()
        self._ids, self._firsts, self._several = array("L"), array("L"), {}
        self._sites = Sites(self.library)
        return SnapshotSummary(pending=self.pending, stack_depths=self.stack_depths,
                               await_depths=depths, sites=top,
                               read_seconds=snapshot.duration_s, read_at=snapshot.taken_at)


def summarize(snapshot: Snapshot, top_sites: int,
              library: re.Pattern[str] | None = APPLICATION) -> SnapshotSummary:
    summarizer = Summarizer(top_sites, library)
    for task in snapshot.tasks:
        summarizer.add(task)
    return summarizer.finish(snapshot)


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


class Families:
    """The metric families of one scrape, filled process by process."""

    def __init__(self) -> None:
        self.by_key: dict[str, Any] = {spec.key: family(spec.key) for spec in FAMILIES
                                       if spec.per_process}

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
        f["read_at"].add_metric(lab, s.read_at)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self.by_key.values())


class MetricsCollector(Collector):
    """A prometheus_client collector over the daemon's latest state (no work at scrape)."""

    def __init__(self, state: Callable[[], DaemonState]) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        state = self._state()
        build = family("build")
        build.add_metric([__version__], {})
        yield build
        attached = family("processes")
        attached.add_metric([], len(state.views))
        yield attached
        errors = family("errors")
        for kind, n in sorted(state.errors.items()):
            errors.add_metric([kind], n)
        yield errors
        scanned = family("last_scan")
        scanned.add_metric([], state.last_scan)
        yield scanned
        families = Families()
        for view in state.views:
            families.add(view)
        yield from families
