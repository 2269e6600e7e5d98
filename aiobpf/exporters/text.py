"""``ps`` table and ``pstree`` tree, in the layout of ``python3.14 -m asyncio``.

The tree follows CPython's ``asyncio.tools``: a task's coroutine frames come
outermost first under it, the tasks it awaits hang under the frame they are
awaited from, and a task awaited by several tasks appears under each.  Unlike
3.14, frames get a single space after the box characters (as the issue that
introduced internal stacks, gh-135371, shows), an awaiter that is not a task
gets a node of its own instead of making the task vanish, and building is
linear and iterative, so a million tasks or a chain ten thousand deep render.

Names come from the target: task names, qualnames, file names and type names are
printed with ``safe_text.escape`` (control characters, separators and the backslash
as escapes, ``\\x1b`` for ESC, ``\\n`` for a newline), so that a name can neither
drive the terminal nor forge a line.  CSV fields are escaped the same way, and a
field that begins with ``=``, ``+``, ``-`` or ``@`` gets a leading ``'`` so that a
spreadsheet shows it as text instead of running it as a formula.  The JSON output
(``json_doc``) keeps names exact.

Pure functions of a ``Snapshot``: no process is read here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator

from aiobpf.collector.model import Frame, Snapshot, Task
from aiobpf.exporters.await_graph import cycles_of
from aiobpf.safe_text import escape

TASK_MARK = "(T)"
FUTURE_MARK = "(F)"
RUNNING_MARK = "[running]"   # the task was stepping when it was read (its stack may move)
PARTIAL_MARK = "[partial]"   # part of the task could not be read (JSON says why)


def task_label(task: Task) -> str:
    """A task's name, escaped, with the marks of a task read while running or in part
    (CPython's tool shows neither; a parked task's line is the same as its)."""
    label = escape(task.name)
    if task.state == "running":
        label += " " + RUNNING_MARK
    if task.errors:
        label += " " + PARTIAL_MARK
    return label
TABLE_HEADER = ("tid", "task id", "task name", "coroutine stack", "awaiter chain",
                "awaiter name", "awaiter id")
_WIDTHS = (10, 20, 20, 50, 50, 15, 15)


class CycleFound(Exception):
    """The await graph has cycles; ``lines`` say which, as 3.14 prints them."""

    def __init__(self, cycles: list[list[int]], lines: list[str]) -> None:
        super().__init__("await-graph contains cycles")
        self.cycles = cycles
        self.lines = lines


# Spreadsheets run a cell that starts with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@")


def format_frame(frame: Frame) -> str:
    """"qualname file:line", escaped for a terminal."""
    if frame.line == 0 and frame.filename == "":
        return escape(frame.name)
    return f"{escape(frame.name)} {escape(frame.filename)}:{frame.line}"


def _inner_first_names(frames: Iterable[Frame]) -> str:
    return " -> ".join(escape(f.name) for f in reversed(list(frames)))


# -- pstree -------------------------------------------------------------------
def tree_lines(snapshot: Snapshot) -> list[str]:
    """The pstree text, one line per element; raises CycleFound for cyclic graphs."""
    return list(iter_tree(snapshot))


def iter_tree(snapshot: Snapshot) -> Iterator[str]:
    """The pstree lines, produced as they are printed (a million tasks make five
    million lines); raises CycleFound at once, before the first line."""
    tasks = snapshot.tasks
    by_id = {t.id: t for t in tasks}
    cycles = cycles_of(snapshot)
    if cycles:
        lines = ["cycle: " + " → ".join(escape(by_id[tid].name) if tid in by_id else hex(tid)
                                         for tid in c) for c in cycles]
        raise CycleFound(cycles, lines)

    # Nodes: the tasks (numbered as in `tasks`), then awaiters that are not pending
    # tasks, then the frames of tasks that await others (the awaited tasks hang under
    # their innermost frame, shared as 3.14 shares it).  The frames of a task that
    # awaits nothing have no children: they are printed straight from the task.
    labels: list[str] = [f"{TASK_MARK} {task_label(t)}" for t in tasks]
    children: list[list[int] | None] = [None] * len(tasks)
    index = {t.id: i for i, t in enumerate(tasks)}
    other_node: dict[int, int] = {}
    hook: dict[int, int] = {}              # awaiting task -> node of its innermost frame
    task_edges: set[tuple[int, int]] = set()
    is_child = bytearray(len(tasks))

    def new_node(label: str) -> int:
        labels.append(label)
        children.append(None)
        return len(labels) - 1

    def add(parent: int, child: int) -> None:
        kids = children[parent]
        if kids is None:
            kids = children[parent] = []
        kids.append(child)

    def hang_frames(task: Task) -> int:
        cur = index[task.id]
        for frame in task.frames:
            node = new_node(format_frame(frame))
            add(cur, node)
            cur = node
        return cur

    for i, task in enumerate(tasks):
        for awaiter in task.awaited_by:
            parent_task = by_id.get(awaiter.id) if awaiter.is_task else None
            if parent_task is not None:
                cur = hook.get(awaiter.id, -1)
                if cur < 0:
                    cur = hook[awaiter.id] = hang_frames(parent_task)
            else:
                cur = other_node.get(awaiter.id, -1)
                if cur < 0:
                    what = (escape(awaiter.type_name) if not awaiter.is_task
                            else "Task (not pending)")
                    cur = other_node[awaiter.id] = new_node(
                        f"{FUTURE_MARK} {what} {awaiter.id:#x}")
            if (cur, i) not in task_edges:
                task_edges.add((cur, i))
                add(cur, i)
                is_child[i] = 1

    roots = [i for i in range(len(tasks)) if not is_child[i]] + list(other_node.values())
    return _render(roots, labels, children, tasks, hook)


def _render(roots: list[int], labels: list[str], children: list[list[int] | None],
            tasks: list[Task], hook: dict[int, int]) -> Iterator[str]:
    n_tasks = len(tasks)
    # Frames are shared by many tasks: each is escaped once (by identity: a Frame's own
    # hash is Python code, and the snapshot keeps every frame alive while it renders).
    shown: dict[int, str] = {}
    for root in roots:
        todo: list[tuple[int, str, bool]] = [(root, "", True)]
        pop, push = todo.pop, todo.append
        while todo:
            node, prefix, last = pop()
            if last:
                yield prefix + "└── " + labels[node]
                inner = prefix + "    "
            else:
                yield prefix + "├── " + labels[node]
                inner = prefix + "│   "
            if node < n_tasks and tasks[node].id not in hook:
                # A task that awaits no other task: its frames, one under the other.
                for frame in tasks[node].frames:
                    text = shown.get(id(frame))
                    if text is None:
                        text = shown[id(frame)] = format_frame(frame)
                    yield inner + "└── " + text
                    inner += "    "
                continue
            kids = children[node]
            if kids:
                push((kids[-1], inner, True))
                for i in range(len(kids) - 2, -1, -1):
                    push((kids[i], inner, False))


# -- ps -----------------------------------------------------------------------
def table_rows(snapshot: Snapshot, marks: bool = True) -> list[list[str]]:
    """The ps rows, names escaped for a terminal; ``marks``: a task read while running
    or in part says so after its name (``task_label``)."""
    by_id: dict[int, Task] = {t.id: t for t in snapshot.tasks}
    rows: list[list[str]] = []
    for task in snapshot.tasks:
        stack = _inner_first_names(task.frames)
        tid = str(task.thread_id)
        name = task_label(task) if marks else escape(task.name)
        if not task.awaited_by:
            rows.append([tid, hex(task.id), name, stack, "", "", "0x0"])
            continue
        for awaiter in task.awaited_by:
            parent = by_id.get(awaiter.id) if awaiter.is_task else None
            if parent is not None:
                rows.append([tid, hex(task.id), name, stack, _inner_first_names(parent.frames),
                             escape(parent.name), hex(awaiter.id)])
            else:
                rows.append([tid, hex(task.id), name, stack, "",
                             escape(awaiter.type_name) if not awaiter.is_task else "Unknown",
                             hex(awaiter.id)])
    return rows


def render_table(rows: list[list[str]]) -> str:
    def line(cells: Iterable[str]) -> str:
        return " ".join(f"{c:<{w}}" for c, w in zip(cells, _WIDTHS, strict=True))

    out = [line(TABLE_HEADER), "-" * 180]
    out.extend(line(row) for row in rows)
    return "\n".join(out) + "\n"


def render_csv(rows: list[list[str]]) -> str:
    """CSV of ``table_rows`` (escaped already: no field holds a line break), with
    fields that a spreadsheet would run as a formula prefixed with ``'``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TABLE_HEADER)
    writer.writerows([_not_formula(cell) for cell in row] for row in rows)
    return buf.getvalue()


def _not_formula(cell: str) -> str:
    return "'" + cell if cell.startswith(_FORMULA_START) else cell
