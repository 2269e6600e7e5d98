"""Async stacks: each task's place in the await graph, as one line from its root task.

A task that awaits no other task (a leaf of the await graph) stands for its whole
chain: its stack reads, root first, the root task, the root's coroutine frames, the
task it awaits, that task's frames, and so on down to the leaf's own frames (the
convention of CPython 3.15's sampling profiler, ``--async-aware``).  A task awaited
by several tasks follows the one with the lowest id, and its node says how many it
has; a chain that loops, or that reaches an awaiter that is not a task, ends there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from aiobpf.collector.cpu_samples import Batch, CpuSample
from aiobpf.collector.model import Frame, Snapshot, Task

MAX_CHAIN = 1024   # tasks in one chain: a forged graph cannot make a stack without end


@dataclass(frozen=True, slots=True)
class Node:
    """One element of a stack: a task, a Python frame, or a thread."""

    kind: str            # task | frame | thread
    name: str            # task name, co_qualname, or "thread TID"
    filename: str = ""
    line: int = 0

    @classmethod
    def of_frame(cls, frame: Frame) -> Node:
        return cls("frame", frame.name, frame.filename, frame.line)

    def label(self) -> str:
        """How flame graphs name it: ``[task] name``, ``qualname (file:line)``."""
        if self.kind == "task":
            return f"[task] {self.name}"
        if self.kind == "thread":
            return f"[{self.name}]"
        return f"{self.name} ({self.filename}:{self.line})" if self.filename else self.name


Stack = tuple[Node, ...]


def _task_node(task: Task, parents: int) -> Node:
    name = task.name or f"Task-{task.id:#x}"
    return Node("task", f"{name} ({parents} parents)" if parents > 1 else name)


class AwaitGraph:
    """Who awaits whom in one snapshot, for building stacks."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.by_id = {task.id: task for task in snapshot.tasks}
        self.parents = {task.id: sorted(a.id for a in task.awaited_by
                                        if a.is_task and a.id in self.by_id)
                        for task in snapshot.tasks}
        self.awaiting = {parent for ids in self.parents.values() for parent in ids}

    def leaves(self) -> Iterator[Task]:
        """The tasks that await no other task."""
        return (task for task in self.by_id.values() if task.id not in self.awaiting)

    def chain(self, task: Task) -> list[Task]:
        """``task`` and its awaiters up to its root task, innermost first (each task's
        first awaiter; a loop ends the chain, and so do ``MAX_CHAIN`` tasks)."""
        out: list[Task] = []
        seen: set[int] = set()
        current: Task | None = task
        while current is not None and current.id not in seen and len(seen) < MAX_CHAIN:
            seen.add(current.id)
            out.append(current)
            up = self.parents.get(current.id, [])
            current = self.by_id[up[0]] if up else None
        return out

    def stack(self, task: Task, frames: tuple[Frame, ...] | None = None) -> Stack:
        """``task``'s async stack, root first; ``frames``: its own frames instead of
        the ones it was read suspended in (a CPU sample's)."""
        parts: list[tuple[Node, ...]] = []
        for current in self.chain(task):
            own = frames if current is task and frames is not None else current.frames
            parts.append((_task_node(current, len(self.parents.get(current.id, []))),
                          *map(Node.of_frame, own)))
        return tuple(node for part in reversed(parts) for node in part)


def async_stacks(snapshot: Snapshot) -> Iterator[tuple[Task, Stack]]:
    """Every leaf task of the snapshot with its async stack, root first."""
    graph = AwaitGraph(snapshot)
    for leaf in graph.leaves():
        yield leaf, graph.stack(leaf)


def thread_stack(tid: int, frames: tuple[Frame, ...]) -> Stack:
    """A CPU sample outside any task: its thread, then its frames."""
    return (Node("thread", f"thread {tid}"), *map(Node.of_frame, frames))


def cpu_stack(sample: CpuSample, *graphs: AwaitGraph) -> Stack:
    """A CPU sample's stack: its frames under the async stack of the task it ran for,
    found in the first of ``graphs`` that has it; else under its thread."""
    for graph in graphs:
        task = graph.by_id.get(sample.task) if sample.task else None
        if task is not None:
            return graph.stack(task, sample.frames)
    return thread_stack(sample.tid, sample.frames)


def batch_stacks(batch: Batch) -> Iterator[Stack]:
    """The stacks of a batch of CPU samples: each under the task it ran for, as the
    batch's snapshot knows it, else as the one before it did (finished since)."""
    graphs = [AwaitGraph(batch.snapshot)]
    if batch.previous is not None:
        graphs.append(AwaitGraph(batch.previous))
    return (cpu_stack(sample, *graphs) for sample in batch.samples)
