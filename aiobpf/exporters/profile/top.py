"""What ``aiobpf top`` shows: tasks by CPU share over a sliding window of CPU samples,
and where the tasks wait, as lines of text (pure: the command line draws them).

Tasks are keyed by id (two tasks of one name are two rows); each row names the task's
chain (root task > ... > task), its share of the window's samples, its steps per
second over the window and its longest step (``StepWindow``: the capture program's
per-task counters, when its probes are attached), and the frame it spent most
samples in.  The second table is the wall-time view, where tasks spend their time
waiting: the pending tasks by await site (the frame a suspended task waits in, as
``aiobpf_suspended_tasks{site}`` names it), each site's share of the task-time over
the window (``WaitWindow``: every refresh counts each pending task once, as
``profile --mode wall`` counts each task once a sample) and its tasks now.  Names are
the target's: escaped (``safe_text.escape``) and cut to the column."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aiobpf.collector.cpu_samples import CpuSample
from aiobpf.collector.model import Frame, Snapshot
from aiobpf.exporters.profile.stacks import AwaitGraph
from aiobpf.exporters.sites import Sites
from aiobpf.safe_text import escape

OUTSIDE = 0   # the "task" of samples outside any task
T = TypeVar("T")


@dataclass
class _Recent(Generic[T]):
    """What was added in the last ``seconds``, each value with its time."""

    seconds: float = 10.0
    readings: deque[tuple[float, T]] = field(default_factory=deque)

    def add(self, at: float, value: T) -> None:
        self.readings.append((at, value))
        while self.readings and self.readings[0][0] < at - self.seconds:
            self.readings.popleft()


class TopWindow(_Recent[list[CpuSample]]):
    """The last ``seconds`` of samples, with the tasks they ran for."""

    def samples(self) -> Iterable[CpuSample]:
        return (s for _, batch in self.readings for s in batch)


def waiting_sites(snapshot: Snapshot) -> Counter[str]:
    """The pending tasks of ``snapshot`` counted by the await site they wait at."""
    sites: Counter[str] = Counter()
    site_of = Sites().of   # each frame object classified once
    for task in snapshot.tasks:
        if task.state == "pending":
            sites[site_of(task.frames) or "(standard library only)"] += 1
    return sites


class WaitWindow(_Recent[Counter[str]]):
    """The await sites of the pending tasks at each refresh of the last ``seconds``."""

    def shares(self) -> Counter[str]:
        """Each site's task-refreshes over the window (its share of the task-time)."""
        total: Counter[str] = Counter()
        for _, sites in self.readings:
            total.update(sites)
        return total

    def now(self) -> Counter[str]:
        return self.readings[-1][1] if self.readings else Counter()


@dataclass(frozen=True)
class TaskSteps:
    """What the capture program counted of one task since its probes were attached."""

    steps: int
    max_step_ns: int


@dataclass
class StepWindow:
    """Each task's step count, read at every refresh: its steps per second over the
    last ``seconds``, and its longest step since the probes were attached (``since``:
    every count was 0 then)."""

    since: float
    seconds: float = 10.0
    readings: deque[tuple[float, dict[int, TaskSteps]]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.readings.append((self.since, {}))

    def add(self, at: float, counts: dict[int, TaskSteps]) -> None:
        """A reading; the oldest kept is the last one at or before the window's start."""
        self.readings.append((at, counts))
        while len(self.readings) > 2 and self.readings[1][0] <= at - self.seconds:
            self.readings.popleft()

    def rate(self, task: int) -> float | None:
        """Steps per second of ``task`` over the window (None: one reading only)."""
        (first_at, first), (last_at, last) = self.readings[0], self.readings[-1]
        if last_at <= first_at:
            return None
        now, then = last.get(task), first.get(task)
        steps = (now.steps if now else 0) - (then.steps if then else 0)
        return max(steps, 0) / (last_at - first_at)

    def longest_ns(self, task: int) -> int | None:
        counts = self.readings[-1][1].get(task)
        return counts.max_step_ns if counts else None

    def tasks(self) -> set[int]:
        return set(self.readings[-1][1])


def _duration(ns: int | None) -> str:
    if ns is None:
        return "-"
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.2f}s"
    return f"{ns / 1e6:.1f}ms" if ns >= 1_000_000 else f"{ns / 1e3:.0f}us"


def _fit(text: str, width: int) -> str:
    text = escape(text)
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def _where(frame: Frame | None) -> str:
    if frame is None:
        return ""
    short = frame.filename.rsplit("/", 1)[-1]
    return f"{frame.name} ({short}:{frame.line})" if short else frame.name


def _chain(graph: AwaitGraph, task_id: int) -> str:
    task = graph.by_id.get(task_id)
    if task is None:
        return f"task {task_id:#x} (finished)"
    return " > ".join(t.name or f"{t.id:#x}" for t in reversed(graph.chain(task)))


def lines(window: TopWindow, snapshot: Snapshot, header: str, width: int = 120,
          rows: int = 20, steps: StepWindow | None = None, steps_note: str = "",
          waits: WaitWindow | None = None) -> list[str]:
    """The screen: a header, tasks by CPU share (with their steps per second and
    longest step when ``steps``; else ``steps_note`` says why not), then await sites
    by their share of the task-time over ``waits`` (this snapshot's alone without)."""
    samples = list(window.samples())
    graph = AwaitGraph(snapshot)
    by_task: Counter[int] = Counter()
    where: dict[int, Counter[Frame]] = {}
    for s in samples:
        key = s.task if s.task else OUTSIDE
        by_task[key] += 1
        if s.frames:
            where.setdefault(key, Counter())[s.frames[-1]] += 1
    total = max(len(samples), 1)
    in_tasks = sum(n for task, n in by_task.items() if task != OUTSIDE)
    out = [_fit(header, width),
           _fit(f"CPU samples in the last {window.seconds:g} s: {len(samples)}; in tasks "
                f"{100 * in_tasks / total:.1f}%, outside any task (loop, callbacks) "
                f"{100 * by_task[OUTSIDE] / total:.1f}%; {len(snapshot.tasks)} tasks pending",
                width),
           _fit(f"STEPS/S over the last {steps.seconds:g} s, LONGEST step since top "
                f"started: counted per task by the capture program's probes" if steps
                else f"STEPS/S, LONGEST step: {steps_note}", width)]
    chain_w = max((width - 8 - 20 - 2) // 2, 20)
    out.append(f"{'CPU%':>6}  {'STEPS/S':>8} {'LONGEST':>9}  "
               f"{'TASK CHAIN (root > task)':<{chain_w}} EXECUTING MOST")
    ranked = [task for task, _ in by_task.most_common() if task != OUTSIDE]
    if steps is not None:   # then the tasks that step without a CPU sample, busiest first
        idle = (steps.tasks() & set(graph.by_id)) - set(ranked)
        ranked += sorted(idle, key=lambda t: -(steps.rate(t) or 0.0))
    for task in ranked[:rows]:
        top = where.get(task, Counter()).most_common(1)
        rate = steps.rate(task) if steps else None
        longest = steps.longest_ns(task) if steps else None
        out.append(f"{100 * by_task[task] / total:>6.1f}  "
                   f"{'-' if rate is None else f'{rate:.1f}':>8} {_duration(longest):>9}  "
                   f"{_fit(_chain(graph, task), chain_w):<{chain_w}} "
                   f"{_fit(_where(top[0][0] if top else None), width - chain_w - 30)}")
    if waits is None:
        waits = WaitWindow()
        waits.add(0.0, waiting_sites(snapshot))
    shares, now = waits.shares(), waits.now()
    task_time = max(sum(shares.values()), 1)
    out += ["", _fit(f"{'WALL%':>6} {'TASKS':>6}  WAITING AT (await site; WALL%: its share "
                     f"of the pending tasks' time over the last {waits.seconds:g} s)", width)]
    for site, n in shares.most_common(rows):
        out.append(f"{100 * n / task_time:>6.1f} {now[site]:>6}  {_fit(site, width - 15)}")
    return out
