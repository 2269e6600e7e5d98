"""The await graph of a snapshot: which tasks await which, and its cycles (a task that
awaits, through others, itself: 3.14's tool refuses to draw those, and so does pstree)."""

from __future__ import annotations

from collections.abc import Iterable

from aiobpf.collector.model import Snapshot, Task


def find_cycles(edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Cycles among tasks (depth-first search for back edges), each closed: [a, b, a]."""
    awaited: dict[int, dict[int, None]] = {}  # an ordered set of children per parent
    for parent, child in edges:
        awaited.setdefault(parent, {})[child] = None
    return _search(awaited)


def cycles_of(snapshot: Snapshot) -> list[list[int]]:
    """``find_cycles`` of the snapshot's task-awaits-task edges."""
    tasks = snapshot.tasks
    index = {t.id: i for i, t in enumerate(tasks)}
    parents = dict.fromkeys([a.id for t in tasks for a in t.awaited_by
                             if a.is_task and a.id in index])
    return cycles_among(tasks, index, parents)


def cycles_among(tasks: list[Task], index: dict[int, int],
                 parents: Iterable[int]) -> list[list[int]]:
    """``find_cycles`` of the task-awaits-task edges, the same cycles in the same order,
    from what a caller knows already: ``index`` (task id -> position in ``tasks``) and
    ``parents``, the tasks that await a task in the order their edges first come."""
    awaited: dict[int, dict[int, None]] = {parent: {} for parent in parents}
    # Only the edges into a parent can be on a cycle (the search skips the others);
    # they are added in task order, as find_cycles gets them.  (Tasks that share an id
    # are all read: ``index`` has the last one only.)
    unique = len(index) == len(tasks)
    for i in sorted(index[parent] for parent in awaited) if unique else range(len(tasks)):
        task = tasks[i]
        if task.id in awaited:
            for a in task.awaited_by:
                if a.is_task and a.id in awaited:
                    awaited[a.id][task.id] = None
    return _search(awaited)


def _search(awaited: dict[int, dict[int, None]]) -> list[list[int]]:
    """The cycles of the graph ``awaited`` (parent -> its children, in edge order)."""
    # A task that awaits no task is on no cycle: the search skips them (most tasks, in a
    # big process: 100,000 leaves under 1,000 groups leave a graph of 1,000 nodes).
    graph = {parent: [child for child in children if child in awaited]
             for parent, children in awaited.items()}
    white, grey, black = 0, 1, 2
    color: dict[int, int] = {}
    cycles: list[list[int]] = []
    for root in list(graph):
        if color.get(root, white) != white:
            continue
        path: list[int] = [root]
        on_path = {root: 0}
        color[root] = grey
        stack = [iter(graph[root])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                done = path.pop()
                del on_path[done]
                color[done] = black
                continue
            state = color.get(nxt, white)
            if state == white:
                color[nxt] = grey
                on_path[nxt] = len(path)
                path.append(nxt)
                stack.append(iter(graph[nxt]))
            elif state == grey:
                cycles.append([*path[on_path[nxt]:], nxt])
    return cycles
