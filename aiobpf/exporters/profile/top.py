"""What ``aiobpf top`` shows: tasks by CPU share over a sliding window of CPU samples,
and where the tasks wait, as lines of text (pure: the command line draws them).

Tasks are keyed by id (two tasks of one name are two rows); each row names the task's
chain (root task > ... > task), its share of the window's samples, and the frame it
spent most samples in.  The second table counts the pending tasks by await site (the
frame a suspended task waits in, as ``aiobpf_suspended_tasks{site}`` names it): the
wall-time view, where time is spent waiting.  Names are the target's: escaped
(``safe_text.escape``) and cut to the column."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiobpf.collector.cpu_samples import CpuSample
from aiobpf.collector.model import Frame, Snapshot, Task
from aiobpf.exporters.profile.stacks import MAX_CHAIN, AwaitGraph
from aiobpf.exporters.sites import await_site
from aiobpf.safe_text import escape

OUTSIDE = 0   # the "task" of samples outside any task


@dataclass
class TopWindow:
    """The last ``seconds`` of samples, with the tasks they ran for."""

    seconds: float = 10.0
    batches: deque[tuple[float, list[CpuSample]]] = field(default_factory=deque)

    def add(self, at: float, samples: list[CpuSample]) -> None:
        self.batches.append((at, samples))
        while self.batches and self.batches[0][0] < at - self.seconds:
            self.batches.popleft()

    def samples(self) -> Iterable[CpuSample]:
        return (s for _, batch in self.batches for s in batch)


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
    names: list[str] = []
    seen: set[int] = set()
    current: Task | None = task
    while current is not None and current.id not in seen and len(seen) < MAX_CHAIN:
        seen.add(current.id)
        names.append(current.name or f"{current.id:#x}")
        up = graph.parents.get(current.id, [])
        current = graph.by_id.get(up[0]) if up else None
    return " > ".join(reversed(names))


def lines(window: TopWindow, snapshot: Snapshot, header: str, width: int = 120,
          rows: int = 20) -> list[str]:
    """The screen: a header, tasks by CPU share, then await sites by tasks waiting."""
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
                width), ""]
    chain_w = max((width - 8 - 2) // 2, 20)
    out.append(f"{'CPU%':>6}  {'TASK CHAIN (root > task)':<{chain_w}} EXECUTING MOST")
    for task, n in by_task.most_common(rows):
        if task == OUTSIDE:
            continue
        top = where.get(task, Counter()).most_common(1)
        out.append(f"{100 * n / total:>6.1f}  {_fit(_chain(graph, task), chain_w):<{chain_w}} "
                   f"{_fit(_where(top[0][0] if top else None), width - chain_w - 9)}")
    sites: Counter[str] = Counter()
    for pending in snapshot.tasks:
        if pending.state == "pending":
            sites[await_site(pending) or "(standard library only)"] += 1
    out += ["", f"{'TASKS':>6}  WAITING AT (await site)"]
    for site, n in sites.most_common(rows):
        out.append(f"{n:>6}  {_fit(site, width - 8)}")
    return out
