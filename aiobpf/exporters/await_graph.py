"""The await graph of a snapshot: which tasks await which, and its cycles (a task that
awaits, through others, itself: 3.14's tool refuses to draw those, and so does pstree)."""

from __future__ import annotations

from collections.abc import Iterable

from aiobpf.collector.model import Snapshot


def find_cycles(edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Cycles among tasks (depth-first search for back edges), each closed: [a, b, a]."""
    awaited: dict[int, dict[int, None]] = {}  # an ordered set of children per parent
    for parent, child in edges:
        awaited.setdefault(parent, {})[child] = None
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


def cycles_of(snapshot: Snapshot) -> list[list[int]]:
    ids = {t.id for t in snapshot.tasks}
    return find_cycles((a.id, t.id) for t in snapshot.tasks for a in t.awaited_by
                       if a.is_task and a.id in ids)
