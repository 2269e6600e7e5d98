"""ps table and pstree tree, on hand-built snapshots (no process is read)."""

from __future__ import annotations

import re
import time
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiobpf.collector.model import Awaiter, Frame, Snapshot, Task
from aiobpf.exporters.await_graph import cycles_of, find_cycles
from aiobpf.exporters.text import (
    CycleFound,
    format_frame,
    render_csv,
    render_table,
    table_rows,
    task_label,
    tree_batches,
    tree_lines,
)
from aiobpf.safe_text import escape

REFERENCE = Path(__file__).resolve().parents[1] / "reference"


def snap(*tasks: Task) -> Snapshot:
    return Snapshot(1, "3.14.10", "release", "/usr/bin/python3.14", [], list(tasks), 0.0, 0.0)


def task(tid: int, name: str, frames: list[Frame], *awaiters: int, thread: int = 7) -> Task:
    return Task(tid, name, thread, "pending", frames, [Awaiter(a) for a in awaiters])


def f(name: str, line: int = 1, filename: str = "/app.py") -> Frame:
    return Frame(name, filename, line)


# -- the gh-135371 example, byte for byte against the real 3.14 output -------------------
def reference_snapshot() -> Snapshot:
    """The app.py snapshot with the ids and thread id that the reference ps file shows."""
    rows = [line for line in (REFERENCE / "app.py.ps.python3.14.txt").read_text().splitlines()[2:]]
    sleep = Frame("sleep", "/usr/lib/python3.14/asyncio/tasks.py", 716)
    app = "/home/user/app.py"
    frames = {
        "Task-1": [Frame("runner", app, 24), sleep],
        "foo1": [Frame("foo1", app, 5), Frame("foo11", app, 8), Frame("foo12", app, 13)],
        "foo2": [Frame("foo2", app, 16), sleep],
    }
    tasks: dict[int, Task] = {}
    for row in rows:
        tid, task_id, name = int(row[0:10]), int(row[11:31], 16), row[32:52].strip()
        awaiter = int(row[171:].strip(), 16)
        if task_id not in tasks:
            kind = "Task-1" if name == "Task-1" else "foo1" if name.startswith("foo1") else "foo2"
            tasks[task_id] = Task(task_id, name, tid, "pending", frames[kind])
        if awaiter:
            tasks[task_id].awaited_by.append(Awaiter(awaiter))
    return snap(*tasks.values())


def test_table_equals_the_real_3_14_output() -> None:
    expected = (REFERENCE / "app.py.ps.python3.14.txt").read_text()
    assert render_table(table_rows(reference_snapshot())) == expected


def test_tree_equals_the_real_3_14_output_but_for_single_spaces() -> None:
    expected = (REFERENCE / "app.py.pstree.python3.14.txt").read_text().replace("──  ", "── ")
    assert "\n".join(tree_lines(reference_snapshot())) + "\n" == expected


# -- tree shapes ------------------------------------------------------------------------
def test_several_roots_in_task_order() -> None:
    lines = tree_lines(snap(task(1, "a", [f("x")]), task(2, "b", [f("y")])))
    assert lines == ["└── (T) a", "    └── x /app.py:1", "└── (T) b", "    └── y /app.py:1"]


def test_task_awaited_by_several_parents_appears_under_each() -> None:
    s = snap(task(1, "p1", [f("wait1", 3)]), task(2, "p2", [f("wait2", 4)]),
             task(3, "child", [f("work", 9)], 1, 2))
    text = "\n".join(tree_lines(s))
    assert text.count("(T) child") == 2
    assert text.count("work /app.py:9") == 2
    assert text.index("wait1") < text.index("(T) child") < text.index("wait2")


def test_children_awaited_from_one_frame_share_it() -> None:
    s = snap(task(1, "parent", [f("outer", 1), f("inner", 2)]),
             task(2, "c1", [f("leaf")], 1), task(3, "c2", [f("leaf")], 1))
    assert tree_lines(s) == [
        "└── (T) parent",
        "    └── outer /app.py:1",
        "        └── inner /app.py:2",
        "            ├── (T) c1",
        "            │   └── leaf /app.py:1",
        "            └── (T) c2",
        "                └── leaf /app.py:1",
    ]


def test_an_awaiter_that_is_not_a_task_keeps_the_task() -> None:
    child = Task(2, "child", 7, "pending", [f("work")],
                 [Awaiter(0xABC, is_task=False, type_name="_GatheringFuture")])
    lines = tree_lines(snap(task(1, "main", [f("m")]), child))
    assert "└── (F) _GatheringFuture 0xabc" in lines
    assert lines[lines.index("└── (F) _GatheringFuture 0xabc") + 1] == "    └── (T) child"
    rows = table_rows(snap(child))
    assert rows == [["7", "0x2", "child", "work", "", "_GatheringFuture", "0xabc"]]


def test_a_task_awaiting_itself_is_a_cycle() -> None:
    with pytest.raises(CycleFound) as raised:
        tree_lines(snap(task(1, "selfish", [f("x")], 1)))
    assert raised.value.lines == ["cycle: selfish → selfish"]
    assert raised.value.cycles == [[1, 1]]


def test_longer_cycles_are_all_listed() -> None:
    s = snap(task(1, "a", [f("x")], 3), task(2, "b", [f("y")], 1), task(3, "c", [f("z")], 2),
             task(4, "d", [f("w")], 5), task(5, "e", [f("v")], 4), task(6, "free", [f("u")]))
    with pytest.raises(CycleFound) as raised:
        tree_lines(s)
    assert sorted(len(c) for c in raised.value.cycles) == [3, 4]
    assert all(re.match(r"cycle: \w+( → \w+)+$", line) for line in raised.value.lines)
    assert len(table_rows(s)) == 6  # ps still lists every task


def test_find_cycles_on_a_dag_finds_none() -> None:
    assert find_cycles([(1, 2), (1, 3), (2, 3), (3, 4)]) == []


def _acyclic(edges: list[tuple[int, int]]) -> bool:
    """Kahn's topological sort: whether every node can be ordered (no cycle)."""
    nodes = {n for edge in edges for n in edge}
    into = {n: 0 for n in nodes}
    for _, child in set(edges):
        into[child] += 1
    ready = [n for n in nodes if not into[n]]
    done = 0
    while ready:
        node = ready.pop()
        done += 1
        for parent, child in set(edges):
            if parent == node:
                into[child] -= 1
                if not into[child]:
                    ready.append(child)
    return done == len(nodes)


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=40))
def test_find_cycles_finds_one_exactly_when_the_graph_has_one(
        edges: list[tuple[int, int]]) -> None:
    """(It skips tasks that await no task: whatever the graph, a cycle is found iff one
    exists, and every one found is a closed path of real edges.)"""
    cycles = find_cycles(edges)
    assert (cycles == []) == _acyclic(edges)
    for cycle in cycles:
        assert cycle[0] == cycle[-1]
        assert all(edge in edges for edge in pairwise(cycle))


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=40))
def test_cycles_of_a_snapshot_are_those_of_its_edges_in_the_same_order(
        edges: list[tuple[int, int]]) -> None:
    """(cycles_of searches only the tasks that await a task and are awaited; a task
    that is not in the snapshot awaits none.)"""
    awaiters: dict[int, list[int]] = {n: [] for n in range(13)}
    for parent, child in edges:
        awaiters[child].append(parent)
    s = snap(*(task(n, f"t{n}", [f("x")], *awaiters[n]) for n in range(12)))
    in_task_order = [(a.id, t.id) for t in s.tasks for a in t.awaited_by if a.id < 12]
    assert cycles_of(s) == find_cycles(in_task_order)


def test_a_frame_shows_as_qualname_file_and_line() -> None:
    assert format_frame(Frame("run", "/a.py", 5)) == "run /a.py:5"
    assert format_frame(Frame("<builtin>", "", 0)) == "<builtin>"


# -- tree against a plain recursive drawing ----------------------------------------------
def _drawn(label: str, kids: list[tuple[str, list]], prefix: str, last: bool,
           out: list[str]) -> None:
    out.append(prefix + ("└── " if last else "├── ") + label)
    for k, (kid_label, grandkids) in enumerate(kids):
        _drawn(kid_label, grandkids, prefix + ("    " if last else "│   "),
               k == len(kids) - 1, out)


def _plain_tree(s: Snapshot) -> list[str]:
    """The tree as the module docstring describes it, drawn recursively (small acyclic
    snapshots with distinct task ids): each task, its frames one under the other, the
    tasks it awaits under its innermost frame; other awaiters as roots of their own."""
    ids = {t.id for t in s.tasks}
    under: dict[tuple[bool, int], list[int]] = {}    # (is a task, id) -> awaited tasks
    others: dict[int, str] = {}
    for i, t in enumerate(s.tasks):
        for a in t.awaited_by:
            key = (a.is_task and a.id in ids, a.id)
            if not key[0]:
                what = escape(a.type_name) if not a.is_task else "Task (not pending)"
                others.setdefault(a.id, f"(F) {what} {a.id:#x}")
            if i not in under.setdefault(key, []):
                under[key].append(i)

    def node(i: int) -> tuple[str, list]:
        t = s.tasks[i]
        kids = [node(j) for j in under.get((True, t.id), [])]
        for frame in reversed(t.frames):
            kids = [(format_frame(frame), kids)]
        return "(T) " + task_label(t), kids

    roots = [node(i) for i, t in enumerate(s.tasks) if not t.awaited_by]
    roots += [(label, [node(j) for j in under[(False, aid)]]) for aid, label in others.items()]
    out: list[str] = []
    for label, kids in roots:
        _drawn(label, kids, "", True, out)
    return out


_SHARED = [Frame("run", "/a.py", 3), Frame("q\x1b\n", "/e\x07.py", 9), Frame("<b>", "", 0)]


@st.composite
def _dags(draw: st.DrawFn) -> Snapshot:
    """Tasks that await earlier tasks (no cycle), futures or tasks not in the snapshot;
    their frames from a few shared Frame objects and copies equal to them."""
    tasks: list[Task] = []
    for n in range(draw(st.integers(1, 9))):
        frames = [Frame(fr.name, fr.filename, fr.line) if draw(st.booleans()) else fr
                  for fr in draw(st.lists(st.sampled_from(_SHARED), max_size=3))]
        awaiters = [Awaiter(100 + k) if k < n else
                    Awaiter(k, is_task=k % 2 == 0, type_name="Fut\x1b")
                    for k in draw(st.lists(st.integers(0, n + 2), max_size=3))]
        t = Task(100 + n, draw(st.sampled_from(["a", "b\n", "c\\"])), 7, "pending",
                 frames, awaiters)
        t.state = draw(st.sampled_from(["pending", "running"]))
        tasks.append(t)
    return snap(*tasks)


@given(_dags())
def test_the_tree_is_the_plain_recursive_drawing(s: Snapshot) -> None:
    assert tree_lines(s) == _plain_tree(s)


def test_the_tree_comes_in_batches_of_whole_stacks_at_least_size_lines_long() -> None:
    s = _flat(100)
    batches = list(tree_batches(s, size=7))
    assert [line for batch in batches for line in batch] == tree_lines(s)
    assert all(len(batch) >= 7 for batch in batches[:-1])


def test_a_frame_shared_by_many_tasks_is_escaped_under_each() -> None:
    evil = Frame("q\x1b[31m", "/e\n.py", 3)
    s = snap(task(1, "p", [f("wait")]), *(task(i, f"t{i}", [evil, f("x")], 1)
                                          for i in range(2, 50)))
    lines = tree_lines(s)
    assert sum("q\\x1b[31m /e\\n.py:3" in line for line in lines) == 48
    assert not _RAW.search("\n".join(lines))


# -- ps ---------------------------------------------------------------------------------
def test_rows_one_per_awaiter_innermost_first() -> None:
    s = snap(task(1, "p", [f("outer"), f("inner")]), task(2, "c", [f("a"), f("b")], 1, 99))
    assert table_rows(s) == [
        ["7", "0x1", "p", "inner -> outer", "", "", "0x0"],
        ["7", "0x2", "c", "b -> a", "inner -> outer", "p", "0x1"],
        ["7", "0x2", "c", "b -> a", "", "Unknown", "0x63"],
    ]


def test_csv_has_the_header_and_quotes() -> None:
    text = render_csv(table_rows(snap(task(1, "a,b", [f("x")]))))
    assert text.splitlines() == [
        "tid,task id,task name,coroutine stack,awaiter chain,awaiter name,awaiter id",
        '7,0x1,"a,b",x,,,0x0',
    ]


# -- scale ------------------------------------------------------------------------------
def _flat(n: int) -> Snapshot:
    root = task(1, "root", [f("main")])
    return snap(root, *(task(i + 2, f"t{i}", [f("leaf"), f("sleep")], 1) for i in range(n)))


def test_a_flat_tree_of_200k_tasks_renders_in_linear_time() -> None:
    """4x the tasks take at most 8x the time: this thread's CPU time, which other
    processes' load does not inflate as it does wall time."""
    started = time.thread_time()
    small = len(tree_lines(_flat(50_000)))
    t_small = time.thread_time() - started
    started = time.thread_time()
    big = len(tree_lines(_flat(200_000)))
    t_big = time.thread_time() - started
    assert (small, big) == (2 + 3 * 50_000, 2 + 3 * 200_000)
    assert t_big < 8 * t_small + 0.5


def test_a_chain_3000_deep_renders_without_recursion() -> None:
    """Deeper than Python's recursion limit; the text itself grows with the square of
    the depth (each line is indented by its depth), so the test stops at 3,000."""
    n = 3_000
    tasks = [task(1, "t0", [f("step")])]
    tasks += [task(i + 1, f"t{i}", [f("step")], i) for i in range(1, n)]
    lines = tree_lines(snap(*tasks))
    assert len(lines) == 2 * n
    assert lines[-1].endswith("step /app.py:1")


# -- hostile names ------------------------------------------------------------------------
HOSTILE = "\x1b[2J\nfake line"
_RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202e\ud800-\udfff]")


def _hostile_snapshot() -> Snapshot:
    code = Frame("evil\n\x1b[31mqual\udcff", "/tmp/e\x1b]0;x\x07\r.py", 3)
    parent = task(1, HOSTILE, [code])
    child = Task(2, "bidi\u202eevil\\", 7, "pending", [code],
                 [Awaiter(1), Awaiter(0x99, is_task=False, type_name="Fut\x1b[0m\n")])
    return snap(parent, child)


def test_tree_escapes_names_qualnames_and_files_visibly() -> None:
    lines = tree_lines(_hostile_snapshot())
    text = "\n".join(lines)
    assert not _RAW.search(text), text
    assert "(T) \\x1b[2J\\nfake line" in text
    assert "evil\\n\\x1b[31mqual\ufffd /tmp/e\\x1b]0;x\\x07\\r.py:3" in text
    assert "(T) bidi\\u202eevil\\\\" in text
    assert "(F) Fut\\x1b[0m\\n 0x99" in text
    assert not any(line.lstrip("│├└─ ").startswith("fake line") for line in lines)


def test_a_cycle_of_hostile_names_is_reported_escaped() -> None:
    s = snap(task(1, HOSTILE, [f("x")], 2), task(2, "b\x1b", [f("y")], 1))
    with pytest.raises(CycleFound) as found:
        tree_lines(s)
    assert found.value.lines == ["cycle: b\\x1b → \\x1b[2J\\nfake line → b\\x1b"]


def test_table_and_csv_escape_names_and_hold_one_row_per_line() -> None:
    rows = table_rows(_hostile_snapshot())
    for text in (render_table(rows), render_csv(rows)):
        assert not _RAW.search(text), text
        assert len(text.splitlines()) == len(rows) + (2 if text.startswith("tid ") else 1)
        assert "\\x1b[2J\\nfake line" in text and "Fut\\x1b[0m\\n" in text


def test_csv_fields_a_spreadsheet_would_run_as_formulas_start_with_a_quote() -> None:
    s = snap(task(1, "=HYPERLINK(\"http://x\")", [f("+a")]), task(2, "@SUM(A1)", [f("b")], 1),
             task(3, "-2+3", [f("c")]), task(4, "plain", [f("d")]))
    lines = render_csv(table_rows(s)).splitlines()[1:]
    assert lines == [
        "7,0x1,\"'=HYPERLINK(\"\"http://x\"\")\",'+a,,,0x0",
        "7,0x2,'@SUM(A1),b,'+a,\"'=HYPERLINK(\"\"http://x\"\")\",0x1",
        "7,0x3,'-2+3,c,,,0x0",
        "7,0x4,plain,d,,,0x0",
    ]
    # the table (for terminals) shows names as they are
    assert "=HYPERLINK" in render_table(table_rows(s)).splitlines()[2]


def test_running_and_partial_tasks_are_marked_in_the_tree_and_table_not_in_csv() -> None:
    running = task(1, "busy", [f("spin")])
    running.state = "running"
    partial = task(2, "torn", [f("wait")])
    partial.errors = ("its coroutine changed while it was read",)
    both = task(3, "both", [f("x")])
    both.state, both.errors = "running", ("stack cut",)
    parked = task(4, "parked", [f("y")])
    s = snap(running, partial, both, parked)
    tree = tree_lines(s)
    assert "└── (T) busy [running]" in tree
    assert "└── (T) torn [partial]" in tree
    assert "└── (T) both [running] [partial]" in tree
    assert "└── (T) parked" in tree                     # as CPython's tool prints it
    table = render_table(table_rows(s))
    assert "busy [running]" in table and "torn [partial]" in table
    csv_text = render_csv(table_rows(s, marks=False))
    assert "[running]" not in csv_text and "[partial]" not in csv_text
