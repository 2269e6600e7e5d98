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
from itertools import chain

from aiobpf.collector.model import Awaiter, Frame, Snapshot, Task
from aiobpf.exporters.await_graph import cycles_among
from aiobpf.safe_text import escape, escape_all

TASK_MARK = "(T)"
FUTURE_MARK = "(F)"
RUNNING_MARK = "[running]"   # the task was stepping when it was read (its stack may move)
PARTIAL_MARK = "[partial]"   # part of the task could not be read (JSON says why)
_TASK_HEAD = TASK_MARK + " "


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
    return chain.from_iterable(tree_batches(snapshot))


def tree_batches(snapshot: Snapshot, size: int = 1000) -> Iterator[list[str]]:
    """The pstree lines in lists of about ``size`` (whole stacks: a list may be a few
    lines longer), cheaper to write than one line at a time; raises CycleFound at
    once, before the first list."""
    tasks = snapshot.tasks
    index = {t.id: i for i, t in enumerate(tasks)}
    frame_text = _FrameText()
    nodes = _Nodes(tasks, index, frame_text)
    cycles = cycles_among(tasks, index, nodes.hook)
    if cycles:
        lines = ["cycle: " + " → ".join(escape(tasks[index[tid]].name) if tid in index
                                         else hex(tid) for tid in c) for c in cycles]
        raise CycleFound(cycles, lines)
    return _render(nodes.roots(), nodes.labels, nodes.children, nodes.stacks(),
                   frame_text, size)


class _Nodes:
    """The nodes of the tree: the tasks (numbered as in ``tasks``), then awaiters that
    are not pending tasks, then the frames of tasks that await others (the awaited
    tasks hang under their innermost frame, shared as 3.14 shares it).  The frames of
    a task that awaits nothing have no children: they are printed straight from it."""

    def __init__(self, tasks: list[Task], index: dict[int, int],
                 frame_text: _FrameText) -> None:
        self._tasks, self._index, self._frame_text = tasks, index, frame_text
        self.labels = _task_labels(tasks)
        self.children: list[list[int] | None] = [None] * len(tasks)
        self.hook: dict[int, int] = {}     # awaiting task -> node of its innermost frame
        self._hooked: dict[int, list[int]] = {}   # the same -> that node's children
        self._other: dict[int, int] = {}   # awaiter that is not a pending task -> node
        hooked = self._hooked
        for i, task in enumerate(tasks):
            awaiters = task.awaited_by
            if not awaiters:
                continue
            # Most tasks: awaited by one task only, whose frames hang there already.
            if len(awaiters) == 1 and awaiters[0].is_task:
                kids = hooked.get(awaiters[0].id)
                if kids is not None:
                    kids.append(i)
                    continue
            # Else each node it hangs under once (a task may list an awaiter twice).
            for parent in dict.fromkeys([self._node_of(a) for a in awaiters]):
                self._add(parent, i)

    def roots(self) -> list[int]:
        """The tasks that nothing awaits, in task order, then the other awaiters."""
        return ([i for i, task in enumerate(self._tasks) if not task.awaited_by]
                + list(self._other.values()))

    def stacks(self) -> list[list[Frame] | None]:
        """Per task, the frames printed straight under it: those of a task that awaits
        no task (the others' frames are nodes, ``hook``); None for the others."""
        hook = self.hook
        return [None if task.id in hook else task.frames for task in self._tasks]

    def _node_of(self, awaiter: Awaiter) -> int:
        """The node its awaitees hang under, made on first sight."""
        i = self._index.get(awaiter.id, -1) if awaiter.is_task else -1
        if i >= 0:
            node = self.hook.get(awaiter.id, -1)
            if node < 0:
                node = self.hook[awaiter.id] = self._hang_frames(i)
                kids = self.children[node]
                if kids is None:
                    kids = self.children[node] = []
                self._hooked[awaiter.id] = kids
            return node
        node = self._other.get(awaiter.id, -1)
        if node < 0:
            what = escape(awaiter.type_name) if not awaiter.is_task else "Task (not pending)"
            node = self._other[awaiter.id] = self._new_node(
                f"{FUTURE_MARK} {what} {awaiter.id:#x}")
        return node

    def _hang_frames(self, i: int) -> int:
        """Task ``i``'s frames as a chain of nodes under it; the innermost one."""
        cur = i
        for frame in self._tasks[i].frames:
            node = self._new_node(self._frame_text(frame))
            self._add(cur, node)
            cur = node
        return cur

    def _new_node(self, label: str) -> int:
        self.labels.append(label)
        self.children.append(None)
        return len(self.labels) - 1

    def _add(self, parent: int, child: int) -> None:
        kids = self.children[parent]
        if kids is None:
            self.children[parent] = [child]
        else:
            kids.append(child)


def _task_labels(tasks: list[Task]) -> list[str]:
    """The label of each task's node; the names are escaped all at once."""
    names = escape_all([t.name for t in tasks])
    return [_TASK_HEAD + name if t.state != "running" and not t.errors
            else _TASK_HEAD + task_label(t) for t, name in zip(tasks, names, strict=True)]


class _FrameText:
    """``format_frame`` of each frame, computed once per Frame object: the collector
    shares one Frame between the tasks parked at the same place.  Keyed by identity (a
    Frame's own hash is Python code); the caller keeps the frames alive meanwhile."""

    def __init__(self) -> None:
        self._text: dict[int, str] = {}

    def __call__(self, frame: Frame) -> str:
        text = self._text.get(id(frame))
        if text is None:
            text = self._text[id(frame)] = format_frame(frame)
        return text


def _stack_lines(inner: str, frames: list[Frame], frame_text: _FrameText) -> list[str]:
    """The lines of a task's frames, one under the other, below prefix ``inner``."""
    lines = []
    for frame in frames:
        lines.append(inner + "└── " + frame_text(frame))
        inner += "    "
    return lines


def _render(roots: list[int], labels: list[str], children: list[list[int] | None],
            stacks: list[list[Frame] | None], frame_text: _FrameText,
            size: int) -> Iterator[list[str]]:
    """Depth first, iteratively; each entry of the to-do list carries the text before
    a node's label and the prefix of the lines under it, computed once for all siblings.

    Siblings share that prefix and, in a big process, often their frames too (a
    thousand workers parked at the same line): the lines of the last stack drawn are
    given again while both match (frames that compare equal print the same text)."""
    n_tasks = len(stacks)
    out: list[str] = []
    last_inner, last_frames, last_lines = "", list[Frame](), list[str]()
    for root in roots:
        todo: list[tuple[int, str, str]] = [(root, "└── ", "    ")]
        pop, push = todo.pop, todo.append
        while todo:
            if len(out) >= size:
                yield out
                out = []
            node, head, inner = pop()
            out.append(head + labels[node])
            frames = stacks[node] if node < n_tasks else None
            if frames is not None:
                if inner != last_inner or frames != last_frames:
                    last_inner, last_frames = inner, frames
                    last_lines = _stack_lines(inner, frames, frame_text)
                out.extend(last_lines)
                continue
            kids = children[node]
            if kids:
                push((kids[-1], inner + "└── ", inner + "    "))
                head, below = inner + "├── ", inner + "│   "
                for i in range(len(kids) - 2, -1, -1):
                    push((kids[i], head, below))
    if out:
        yield out


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
