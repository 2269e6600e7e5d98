"""``ps`` table and ``pstree`` tree, in the layout of ``python3.14 -m asyncio``.

The tree follows CPython's ``asyncio.tools``: a task's coroutine frames come
outermost first under it, the tasks it awaits hang under the frame they are
awaited from, and a task awaited by several tasks appears under each.  Unlike
3.14, frames get a single space after the box characters (as the issue that
introduced internal stacks, gh-135371, shows), an awaiter that is not a task
gets a node of its own instead of making the task vanish, and building is
linear and iterative, so a million tasks or a chain ten thousand deep render.

Pure functions of a ``Snapshot``: no process is read here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from aiobpf.collector.model import Frame, Snapshot, Task

TASK_MARK = "(T)"
FUTURE_MARK = "(F)"
TABLE_HEADER = ("tid", "task id", "task name", "coroutine stack", "awaiter chain",
                "awaiter name", "awaiter id")
_WIDTHS = (10, 20, 20, 50, 50, 15, 15)


class CycleFound(Exception):
    """The await graph has cycles; ``lines`` say which, as 3.14 prints them."""

    def __init__(self, cycles: list[list[int]], lines: list[str]) -> None:
        super().__init__("await-graph contains cycles")
        self.cycles = cycles
        self.lines = lines


def format_frame(frame: Frame) -> str:
    if frame.line == 0 and frame.filename == "":
        return frame.name
    return f"{frame.name} {frame.filename}:{frame.line}"


def _inner_first_names(frames: Iterable[Frame]) -> str:
    return " -> ".join(f.name for f in reversed(list(frames)))


def find_cycles(edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Cycles among tasks (depth-first search for back edges), each closed: [a, b, a]."""
    graph: dict[int, dict[int, None]] = {}  # an ordered set of children per parent
    for parent, child in edges:
        graph.setdefault(parent, {})[child] = None
    white, grey, black = 0, 1, 2
    color: dict[int, int] = {}
    cycles: list[list[int]] = []
    for root in list(graph):
        if color.get(root, white) != white:
            continue
        path: list[int] = [root]
        on_path = {root: 0}
        color[root] = grey
        stack = [iter(graph.get(root, ()))]
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
                stack.append(iter(graph.get(nxt, ())))
            elif state == grey:
                cycles.append([*path[on_path[nxt]:], nxt])
    return cycles


def cycles_of(snapshot: Snapshot) -> list[list[int]]:
    ids = {t.id for t in snapshot.tasks}
    return find_cycles((a.id, t.id) for t in snapshot.tasks for a in t.awaited_by
                       if a.is_task and a.id in ids)


# -- pstree -------------------------------------------------------------------
def tree_lines(snapshot: Snapshot) -> list[str]:
    """The pstree text, one line per element; raises CycleFound for cyclic graphs."""
    tasks = snapshot.tasks
    by_id = {t.id: t for t in tasks}
    cycles = cycles_of(snapshot)
    if cycles:
        lines = ["cycle: " + " → ".join(by_id[tid].name if tid in by_id else hex(tid)
                                         for tid in c) for c in cycles]
        raise CycleFound(cycles, lines)

    labels: list[str] = []
    children: list[list[int]] = []

    def new_node(label: str) -> int:
        labels.append(label)
        children.append([])
        return len(labels) - 1

    task_node = {t.id: new_node(f"{TASK_MARK} {t.name}") for t in tasks}
    other_node: dict[int, int] = {}          # awaiters that are not pending tasks
    task_edges: set[tuple[int, int]] = set()
    is_child = bytearray(len(tasks))
    awaiting: set[int] = set()

    def under(task: Task) -> int:
        """Hang a task's frames under it, outermost first; the innermost frame's node.

        Each task's frames are hung once: under the frame of an awaiting task hang all
        the tasks it awaits (3.14 shares frame nodes between them the same way)."""
        cur = task_node[task.id]
        for frame in task.frames:
            node = new_node(format_frame(frame))
            children[cur].append(node)
            cur = node
        return cur

    hook: dict[int, int] = {}  # awaiting task -> node of its innermost frame
    for task in tasks:
        child = task_node[task.id]
        for awaiter in task.awaited_by:
            parent_task = by_id.get(awaiter.id) if awaiter.is_task else None
            if parent_task is not None:
                cur = hook.get(awaiter.id, -1)
                if cur < 0:
                    awaiting.add(awaiter.id)
                    cur = hook[awaiter.id] = under(parent_task)
            else:
                cur = other_node.get(awaiter.id, -1)
                if cur < 0:
                    what = awaiter.type_name if not awaiter.is_task else "Task (not pending)"
                    cur = other_node[awaiter.id] = new_node(
                        f"{FUTURE_MARK} {what} {awaiter.id:#x}")
            if (cur, child) not in task_edges:
                task_edges.add((cur, child))
                children[cur].append(child)
                is_child[child] = 1
    for task in tasks:
        if task.id not in awaiting:
            under(task)

    roots = [task_node[t.id] for t in tasks if not is_child[task_node[t.id]]]
    roots += list(other_node.values())
    out: list[str] = []
    append = out.append
    for root in roots:
        todo: list[tuple[int, str, bool]] = [(root, "", True)]
        pop, push = todo.pop, todo.append
        while todo:
            node, prefix, last = pop()
            if last:
                append(prefix + "└── " + labels[node])
                inner = prefix + "    "
            else:
                append(prefix + "├── " + labels[node])
                inner = prefix + "│   "
            kids = children[node]
            if kids:
                push((kids[-1], inner, True))
                for i in range(len(kids) - 2, -1, -1):
                    push((kids[i], inner, False))
    return out


# -- ps -----------------------------------------------------------------------
def table_rows(snapshot: Snapshot) -> list[list[str]]:
    by_id: dict[int, Task] = {t.id: t for t in snapshot.tasks}
    rows: list[list[str]] = []
    for task in snapshot.tasks:
        stack = _inner_first_names(task.frames)
        tid = str(task.thread_id)
        if not task.awaited_by:
            rows.append([tid, hex(task.id), task.name, stack, "", "", "0x0"])
            continue
        for awaiter in task.awaited_by:
            parent = by_id.get(awaiter.id) if awaiter.is_task else None
            if parent is not None:
                rows.append([tid, hex(task.id), task.name, stack,
                             _inner_first_names(parent.frames), parent.name, hex(awaiter.id)])
            else:
                rows.append([tid, hex(task.id), task.name, stack, "",
                             awaiter.type_name if not awaiter.is_task else "Unknown",
                             hex(awaiter.id)])
    return rows


def render_table(rows: list[list[str]]) -> str:
    def line(cells: Iterable[str]) -> str:
        return " ".join(f"{c:<{w}}" for c, w in zip(cells, _WIDTHS, strict=True))

    out = [line(TABLE_HEADER), "-" * 180]
    out.extend(line(row) for row in rows)
    return "\n".join(out) + "\n"


def render_csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TABLE_HEADER)
    writer.writerows(rows)
    return buf.getvalue()
