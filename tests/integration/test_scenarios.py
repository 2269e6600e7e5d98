"""Scenarios: one small target program per asyncio pattern, on every interpreter.

Each target (``tests/targets/<scenario>.py``, docstring says what it sets up)
prints READY once its tasks are parked.  ``aiobpf ps --format json`` must then
show exactly the tasks the program has, with

- the frames of the target's own code (filename == the script as the target
  sees it) under their qualified names and at the line of the marker comment
  (``# MARKER``) on the line they are suspended at;
- standard-library frames checked loosely (names, no line numbers: they differ
  by version);
- the awaiter edges CPython 3.14 records (``task_awaited_by``, filled by
  ``Task.__step``, gather, shield, wait, as_completed, TaskGroup), also on
  3.11-3.13 where aiobpf infers them.

On 3.14 and 3.15 each scenario is also compared with the real
``python3.X -m asyncio ps/pstree`` run on the same process inside the sid root:
equal but for the two spaces 3.14 prints after the box characters, except where
the real tool is known to fall short (generator-based coroutines and custom
awaitables cut the stack, only the main thread's tasks on 3.14, ASCII-only
strings on 3.14): there the exact difference is asserted instead.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.conftest import TARGETS, RunningTarget, aiobpf, matrix_params, run_target
from tests.pythons import Python

NON_ASCII = "tâches_é.py"


# -- expectations -------------------------------------------------------------
def line_of(script: str, marker: str) -> int:
    """The line of ``script`` that ends with the comment ``# MARKER``."""
    pattern = re.compile(rf"#\s*{re.escape(marker)}\s*$")
    lines = (TARGETS / script).read_text(encoding="utf-8").splitlines()
    hits = [n for n, line in enumerate(lines, 1) if pattern.search(line)]
    assert len(hits) == 1, f"marker {marker!r} in {script}: lines {hits}"
    return hits[0]


@dataclass(frozen=True)
class U:
    """A frame of the target's own code: qualname, marker of its line, kind."""

    name: str
    marker: str
    kind: str = "coroutine"


@dataclass(frozen=True)
class S:
    """A standard-library (asyncio) frame: its qualname, or the qualname's last part."""

    name: str
    optional: bool = False  # present on some versions only


Pattern = U | S


class Dump:
    """One ``aiobpf ps --format json`` of a running target, with checks."""

    def __init__(self, target: RunningTarget, script: str, *, one_thread: bool = True) -> None:
        result = aiobpf("ps", str(target.pid), "--format", "json")
        assert result.returncode == 0, result.stderr
        self.doc = result.json()
        self.target = target
        self.script = script
        tasks = self.doc["tasks"]
        ids = {t["id"] for t in tasks}
        self.by_id = {t["id"]: t for t in tasks}
        self.by_name: dict[str, dict] = {}
        for task in tasks:
            assert task["errors"] == [], task
            assert task["state"] == "pending", task
            assert task["name"] not in self.by_name, f"two tasks named {task['name']!r}"
            self.by_name[task["name"]] = task
            for awaiter in task["awaited_by"]:
                assert not awaiter["is_task"] or awaiter["id"] in ids, (task, awaiter)
            if one_thread:
                assert task["thread_id"] == target.pid, task
        assert self.doc["pid"] == target.pid

    def names(self) -> set[str]:
        return set(self.by_name)

    def awaiters(self, name: str) -> list[str]:
        """Names of the tasks awaiting ``name``; a non-task awaiter as "(F) <type>"."""
        return sorted(a["name"] if a["is_task"] else f"(F) {a['name']}"
                      for a in self.by_name[name]["awaited_by"])

    def edges(self, expected: dict[str, list[str]]) -> None:
        """Every task's awaiters, for every task of the dump."""
        got = {name: self.awaiters(name) for name in self.by_name}
        assert got == {name: sorted(v) for name, v in expected.items()}

    def stack(self, name: str, *expected: Pattern) -> None:
        """The task's frames, outermost first, match ``expected`` exactly."""
        frames = self.by_name[name]["frames"]
        shown = [(f["name"], f["filename"], f["line"], f["kind"]) for f in frames]
        i = 0
        for pattern in expected:
            frame = frames[i] if i < len(frames) else None
            if isinstance(pattern, U):
                want = {"name": pattern.name, "filename": self.target.script,
                        "line": line_of(self.script, pattern.marker), "kind": pattern.kind}
                assert frame == want, f"task {name!r}, frame {i}: want {want}; frames {shown}"
            else:
                ok = (frame is not None and frame["filename"] != self.target.script
                      and "/asyncio/" in frame["filename"] and frame["line"] > 0
                      and (frame["name"] == pattern.name
                           or frame["name"].endswith("." + pattern.name)))
                if not ok and pattern.optional:
                    continue
                assert ok, f"task {name!r}, frame {i}: want stdlib {pattern.name}; {shown}"
            i += 1
        assert i == len(frames), f"task {name!r}: unexpected frames {shown[i:]}"


@contextmanager
def scenario(python: Python, script: str, **kwargs) -> Iterator[Dump]:
    with run_target(python, script) as target:
        yield Dump(target, script, **kwargs)


def leaf_stack(func: str, marker: str) -> tuple[Pattern, ...]:
    return (U(func, marker), S("sleep"))


# -- scenarios on every interpreter --------------------------------------------
@pytest.mark.parametrize("python", matrix_params())
def test_gathered_tasks_are_awaited_by_the_gathering_task_at_every_level(python: Python) -> None:
    with scenario(python, "nested_gather.py") as d:
        assert d.names() == {"main", "a", "b", "c", "middle", "m-leaf-1", "m-leaf-2"}
        d.stack("main", U("main", "MAIN"))
        d.stack("middle", U("middle", "MIDDLE"))
        for leaf in ("a", "b", "c", "m-leaf-1", "m-leaf-2"):
            d.stack(leaf, *leaf_stack("leaf", "LEAF"))
        d.edges({"main": [], "a": ["main"], "b": ["main"], "c": ["main"], "middle": ["main"],
                 "m-leaf-1": ["middle"], "m-leaf-2": ["middle"]})


@pytest.mark.parametrize("python", matrix_params())
def test_gather_return_exceptions(python: Python) -> None:
    with scenario(python, "gather_exceptions.py") as d:
        assert d.names() == {"main", "slow-1", "slow-2"}  # "fails" is done
        d.stack("main", U("main", "MAIN"))
        d.stack("slow-1", *leaf_stack("slow", "SLOW"))
        d.stack("slow-2", *leaf_stack("slow", "SLOW"))
        d.edges({"main": [], "slow-1": ["main"], "slow-2": ["main"]})


@pytest.mark.parametrize("python", matrix_params())
def test_done_futures_await_nothing(python: Python) -> None:
    """A failed gather and a shield cancelled by wait_for's timeout are done: their
    remaining children are roots (3.14 records it; 3.11-3.13 showed the failed gather
    as their awaiter)."""
    with scenario(python, "done_awaiters.py") as d:
        assert d.names() == {"main", "slow-1", "slow-2", "protected"}   # "fails" is done
        d.stack("main", U("main", "MAIN"), S("sleep"))
        for name in ("slow-1", "slow-2", "protected"):
            d.stack(name, *leaf_stack("slow", "SLOW"))
        d.edges({"main": [], "slow-1": [], "slow-2": [], "protected": []})


@pytest.mark.parametrize("python", matrix_params())
def test_a_shielded_task_is_awaited_by_the_task_that_shields_it(python: Python) -> None:
    with scenario(python, "shield.py") as d:
        assert d.names() == {"main", "guard", "protected"}
        d.stack("main", U("main", "MAIN"))
        d.stack("guard", U("guard", "SHIELD"))
        d.stack("protected", *leaf_stack("protected", "PROTECTED"))
        d.edges({"main": [], "guard": ["main"], "protected": ["guard"]})


@pytest.mark.parametrize("python", matrix_params())
def test_wait_for_and_timeout(python: Python) -> None:
    with scenario(python, "timeouts.py") as d:
        names = {"main", "wf-child", "via-wait-for", "to-child", "via-timeout",
                 "via-wait-for-coro"}
        d.stack("main", U("main", "MAIN"), S("sleep"))
        d.stack("via-wait-for", U("via_wait_for", "WAIT-FOR"), S("wait_for"))
        d.stack("via-timeout", U("via_timeout", "TIMEOUT"))
        d.stack("wf-child", *leaf_stack("child", "CHILD"))
        d.stack("to-child", *leaf_stack("child", "CHILD"))
        edges = {"main": [], "via-wait-for": [], "via-timeout": [], "via-wait-for-coro": [],
                 "wf-child": ["via-wait-for"], "to-child": ["via-timeout"]}
        if python.minor == (3, 11):
            # 3.11's wait_for wraps the coroutine in a new task and awaits a waiter
            # future that the task's done-callback (a functools.partial) releases.
            extra = d.names() - names
            assert len(extra) == 1 and re.fullmatch(r"Task-\d+", next(iter(extra))), extra
            wrapped = extra.pop()
            d.stack(wrapped, *leaf_stack("child", "CHILD"))
            d.stack("via-wait-for-coro", U("via_wait_for_coro", "WAIT-FOR-CORO"), S("wait_for"))
            edges[wrapped] = ["via-wait-for-coro"]
        else:
            # From 3.12 on wait_for awaits the coroutine itself, inside asyncio.timeout.
            assert d.names() == names
            d.stack("via-wait-for-coro", U("via_wait_for_coro", "WAIT-FOR-CORO"),
                    S("wait_for"), U("child", "CHILD"), S("sleep"))
        d.edges(edges)


@pytest.mark.parametrize("python", matrix_params())
def test_tasks_in_asyncio_wait_are_awaited_by_the_waiting_task(python: Python) -> None:
    with scenario(python, "wait.py") as d:
        assert d.names() == {"main", "first", "w-1", "w-2", "w-3"}
        d.stack("main", U("main", "MAIN"), S("wait"), S("_wait"))
        d.stack("first", U("first", "FIRST"), S("wait"), S("_wait"))
        for name in ("w-1", "w-2", "w-3"):
            d.stack(name, *leaf_stack("sleeper", "SLEEPER"))
        d.edges({"main": [], "first": ["main"], "w-3": ["main"], "w-1": ["first"],
                 "w-2": ["first"]})


@pytest.mark.parametrize("python", matrix_params())
def test_as_completed_tasks_are_awaited_by_the_consuming_task(python: Python) -> None:
    with scenario(python, "as_completed.py") as d:
        assert d.names() == {"main", "consumer", "ac-1", "ac-2"}
        d.stack("main", U("main", "MAIN"))
        # as_completed.<locals>._wait_for_one (3.11, 3.12) or
        # _AsCompletedIterator._wait_for_one (3.13+), then Queue.get.
        d.stack("consumer", U("consumer", "CONSUMER"), S("_wait_for_one"), S("Queue.get"))
        d.stack("ac-1", *leaf_stack("sleeper", "SLEEPER"))
        d.stack("ac-2", *leaf_stack("sleeper", "SLEEPER"))
        d.edges({"main": [], "consumer": ["main"], "ac-1": ["consumer"], "ac-2": ["consumer"]})


@pytest.mark.parametrize("python", matrix_params())
def test_taskgroup_children_are_awaited_by_the_group_at_every_level(python: Python) -> None:
    with scenario(python, "nested_taskgroups.py") as d:
        assert d.names() == {"main", "outer-1", "outer-2", "inner-1", "inner-2"}
        aexit = (S("TaskGroup.__aexit__"), S("TaskGroup._aexit", optional=True))
        d.stack("main", U("main", "OUTER-GROUP"), *aexit)
        d.stack("outer-1", U("inner_group", "INNER-GROUP"), *aexit)
        for name in ("outer-2", "inner-1", "inner-2"):
            d.stack(name, *leaf_stack("leaf", "LEAF"))
        d.edges({"main": [], "outer-1": ["main"], "outer-2": ["main"],
                 "inner-1": ["outer-1"], "inner-2": ["outer-1"]})


@pytest.mark.parametrize("python", matrix_params())
def test_task_awaiting_task(python: Python) -> None:
    with scenario(python, "task_chain.py") as d:
        assert d.names() == {"main", "first", "second", "third"}
        d.stack("main", U("main", "MAIN"))
        d.stack("first", U("first", "FIRST"))
        d.stack("second", U("second", "SECOND"))
        d.stack("third", *leaf_stack("third", "THIRD"))
        for name in ("main", "first", "second"):
            assert d.by_name[name]["awaits"].startswith("_asyncio.Task "), d.by_name[name]
        d.edges({"main": [], "first": ["main"], "second": ["first"], "third": ["second"]})


@pytest.mark.parametrize("python", matrix_params())
def test_tasks_blocked_on_queues_locks_and_events_await_a_future(python: Python) -> None:
    with scenario(python, "sync_primitives.py") as d:
        assert d.names() == {"main", "q-get", "lock", "event", "semaphore", "condition"}
        d.stack("main", U("main", "MAIN"))
        d.stack("q-get", U("get_item", "QUEUE"), S("Queue.get"))
        d.stack("lock", U("take_lock", "LOCK"), S("_ContextManagerMixin.__aenter__"),
                S("Lock.acquire"))
        d.stack("event", U("wait_event", "EVENT"), S("Event.wait"))
        d.stack("semaphore", U("take_semaphore", "SEMAPHORE"), S("Semaphore.acquire"))
        d.stack("condition", U("wait_condition", "CONDITION"), S("Condition.wait"))
        for name in ("q-get", "lock", "event", "semaphore", "condition"):
            assert d.by_name[name]["awaits"].startswith("_asyncio.Future "), d.by_name[name]
        d.edges({"main": [], "q-get": ["main"], "lock": ["main"], "event": ["main"],
                 "semaphore": ["main"], "condition": ["main"]})


@pytest.mark.parametrize("python", matrix_params())
def test_async_generator_frames_show_between_task_and_leaf(python: Python) -> None:
    with scenario(python, "async_generators.py") as d:
        assert d.names() == {"main", "consumer", "nested", "anext-default"}
        d.stack("main", U("main", "MAIN"))
        d.stack("consumer", U("consumer", "CONSUMER"),
                U("ticks", "TICKS", "async_generator"), S("sleep"))
        d.stack("nested", U("nested", "NESTED"), U("relay", "RELAY", "async_generator"),
                U("ticks", "TICKS", "async_generator"), S("sleep"))
        d.edges({"main": [], "consumer": ["main"], "nested": ["main"],
                 "anext-default": ["main"]})


@pytest.mark.parametrize("python", matrix_params())
def test_anext_with_default(python: Python) -> None:
    """``await anext(agen, default)`` awaits an ``anext_awaitable`` that wraps the
    async generator (its ``wrapped``): the generator's frame must still show."""
    with scenario(python, "async_generators.py") as d:
        d.stack("anext-default", U("anext_default", "ANEXT"),
                U("ticks", "TICKS", "async_generator"), S("sleep"))


@pytest.mark.parametrize("python", matrix_params())
def test_custom_awaitables_show_their_generator_frames(python: Python) -> None:
    with scenario(python, "custom_awaitables.py") as d:
        assert d.names() == {"main", "legacy", "ticket", "delegate"}
        d.stack("main", U("main", "MAIN"))
        d.stack("legacy", U("hold_legacy", "HOLD-LEGACY"),
                U("legacy_sleep", "LEGACY", "generator"), S("sleep"))
        d.stack("ticket", U("hold_ticket", "HOLD-TICKET"),
                U("Ticket.__await__", "TICKET", "generator"))
        assert d.by_name["ticket"]["awaits"].startswith("_asyncio.Future ")
        d.stack("delegate", U("hold_delegate", "HOLD-DELEGATE"), U("delegated", "DELEGATED"),
                S("sleep"))
        d.edges({"main": [], "legacy": ["main"], "ticket": ["main"], "delegate": ["main"]})


@pytest.mark.parametrize("python", matrix_params())
def test_frames_show_qualified_names_of_methods_and_closures(python: Python) -> None:
    with scenario(python, "qualnames.py") as d:
        assert d.names() == {"main", "worker", "static", "classmethod", "poller",
                             "nested-function"}
        d.stack("main", U("main", "MAIN"))
        d.stack("worker", U("Worker.run", "WORKER-RUN"), U("Worker._step", "WORKER-STEP"),
                S("sleep"))
        d.stack("static", *leaf_stack("Worker.static", "STATIC"))
        d.stack("classmethod", *leaf_stack("Worker.klass", "CLASS"))
        d.stack("poller", *leaf_stack("Service.Poller.poll", "POLL"))
        d.stack("nested-function", U("outer", "OUTER"), U("outer.<locals>.inner", "INNER"),
                S("sleep"))
        d.edges({name: ["main"] for name in d.names() - {"main"}} | {"main": []})


@pytest.mark.parametrize("python", matrix_params())
def test_unnamed_and_renamed_tasks(python: Python) -> None:
    with scenario(python, "task_names.py") as d:
        assert d.names() == {"Task-1", "Task-2", "Task-3", "renamed", "renamed-lazy"}
        d.stack("Task-1", U("main", "MAIN"))
        d.stack("Task-2", *leaf_stack("anonymous", "ANONYMOUS"))
        d.stack("Task-3", *leaf_stack("anonymous", "ANONYMOUS"))
        d.stack("renamed", *leaf_stack("renamed", "RENAMED"))
        d.stack("renamed-lazy", *leaf_stack("renamed", "RENAMED"))
        d.edges({"Task-1": [], "Task-2": ["Task-1"], "Task-3": ["Task-1"],
                 "renamed": ["Task-1"], "renamed-lazy": ["Task-1"]})


@pytest.mark.parametrize("python", matrix_params(min_minor=(3, 12)))
def test_an_eager_task_is_awaited_by_the_task_that_created_it(python: Python) -> None:
    with scenario(python, "eager_tasks.py") as d:
        assert d.names() == {"main", "eager-parent", "eager-child"}  # eager-done finished
        d.stack("main", U("main", "MAIN"))
        d.stack("eager-parent", U("eager_parent", "PARENT"))
        d.stack("eager-child", *leaf_stack("eager_child", "CHILD"))
        d.edges({"main": [], "eager-parent": ["main"], "eager-child": ["eager-parent"]})


@pytest.mark.parametrize("python", matrix_params())
def test_threads_with_their_own_loops(python: Python) -> None:
    with run_target(python, "threads.py") as target:
        native = json.loads(target.ready_line.split(" ", 1)[1])
        assert native["main"] == target.pid
        d = Dump(target, "threads.py", one_thread=False)
        owner = {"main": "main", "main-child": "main", "worker-1": "loop-1",
                 "worker-1-child": "loop-1", "worker-2": "loop-2", "worker-2-child": "loop-2"}
        assert d.names() == set(owner)
        assert {name: d.by_name[name]["thread_id"] for name in owner} == \
            {name: native[loop] for name, loop in owner.items()}
        assert set(native.values()) <= {th["thread_id"] for th in d.doc["threads"]}
        d.stack("main", U("main", "MAIN"))
        for worker in ("worker-1", "worker-2"):
            d.stack(worker, U("worker", "WORKER"))
        for child in ("main-child", "worker-1-child", "worker-2-child"):
            d.stack(child, *leaf_stack("child", "CHILD"))
        d.edges({"main": [], "main-child": ["main"], "worker-1": [],
                 "worker-1-child": ["worker-1"], "worker-2": [],
                 "worker-2-child": ["worker-2"]})


@pytest.mark.parametrize("python", matrix_params())
def test_an_await_cycle_is_listed_and_pstree_refuses_to_draw_it(python: Python) -> None:
    with scenario(python, "await_cycle.py") as d:
        assert d.names() == {"main", "cycle-a", "cycle-b"}
        d.stack("main", U("main", "MAIN"), S("sleep"))
        d.stack("cycle-a", U("a", "A"))
        d.stack("cycle-b", U("b", "B"))
        d.edges({"main": [], "cycle-a": ["cycle-b"], "cycle-b": ["cycle-a"]})
        a, b = d.by_name["cycle-a"]["id"], d.by_name["cycle-b"]["id"]
        assert d.doc["cycles"] in ([[a, b, a]], [[b, a, b]])

        tree = aiobpf("pstree", str(d.target.pid))
        assert tree.returncode == 1
        assert tree.stdout == ""
        lines = tree.stderr.splitlines()
        assert lines[:2] == ["ERROR: await-graph contains cycles - cannot print a tree!", ""]
        assert lines[2:] in (["cycle: cycle-a → cycle-b → cycle-a"],
                             ["cycle: cycle-b → cycle-a → cycle-b"])

        ps = aiobpf("ps", str(d.target.pid))
        assert ps.returncode == 0, ps.stderr
        rows = csv_rows(aiobpf("ps", str(d.target.pid), "--format", "csv"))
        assert sorted((r[2], r[5]) for r in rows) == \
            [("cycle-a", "cycle-b"), ("cycle-b", "cycle-a"), ("main", "")]
        for row in rows:
            assert row[1] in ps.stdout and row[2] in ps.stdout


@pytest.mark.parametrize("python", matrix_params())
def test_non_ascii_names_show_exactly(python: Python) -> None:
    with scenario(python, NON_ASCII) as d:
        assert NON_ASCII in d.target.script
        assert d.names() == {"principale", "tâche-é", "задача-1", "🚀-fusée"}
        d.stack("principale", U("main", "MAIN"))
        d.stack("tâche-é", *leaf_stack("attendre_données", "ATTENDRE"))
        d.stack("🚀-fusée", *leaf_stack("attendre_données", "ATTENDRE"))
        d.stack("задача-1", U("Überwacher.prüfen", "PRÜFEN"),
                U("attendre_données", "ATTENDRE"), S("sleep"))
        d.edges({"principale": [], "tâche-é": ["principale"], "задача-1": ["principale"],
                 "🚀-fusée": ["principale"]})
        tree = aiobpf("pstree", str(d.target.pid))
        assert tree.returncode == 0, tree.stderr
        for text in ("(T) tâche-é", "(T) задача-1", "(T) 🚀-fusée",
                     f"Überwacher.prüfen {d.target.script}:{line_of(NON_ASCII, 'PRÜFEN')}"):
            assert text in tree.stdout


@pytest.mark.parametrize("python", matrix_params())
def test_a_gather_not_awaited_yet_is_awaited_by_its_caller(python: Python,
                                                          request: pytest.FixtureRequest
                                                          ) -> None:
    """3.14 records which task called gather() before anything awaits it; 3.11-3.13 do
    not (the _GatheringFuture and its children's _done_callback closure hold no
    reference to the caller), and aiobpf shows the gather's future as the children's
    awaiter instead: that is checked, then the edges are expected to fail (strictly:
    should they ever pass, the test fails and this known gap is closed)."""
    with scenario(python, "detached_gather.py") as d:
        assert d.names() == {"main", "d-1", "d-2"}
        d.stack("main", U("main", "MAIN"), S("sleep"))
        d.stack("d-1", *leaf_stack("sleeper", "SLEEPER"))
        d.stack("d-2", *leaf_stack("sleeper", "SLEEPER"))
        if python.minor < (3, 14):
            futures = {tuple((a["id"], a["is_task"], a["name"])
                             for a in d.by_name[n]["awaited_by"]) for n in ("d-1", "d-2")}
            assert len(futures) == 1
            ((_, is_task, type_name),) = futures.pop()
            assert (is_task, type_name) == (False, "_GatheringFuture")
            request.applymarker(pytest.mark.xfail(
                strict=True, reason="3.11-3.13 do not record which task called gather()"))
        d.edges({"main": [], "d-1": ["main"], "d-2": ["main"]})


# -- against CPython's own tool (3.14, 3.15) ------------------------------------
def csv_rows(result) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0][0] == "tid"
    return rows[1:]


def render_ps(rows: Iterable[list[str]]) -> str:
    """The ps table exactly as asyncio.tools prints it."""
    def line(r: list[str]) -> str:
        return (f"{r[0]:<10} {r[1]:<20} {r[2]:<20} {r[3]:<50} {r[4]:<50} {r[5]:<15} "
                f"{r[6]:<15}")
    header = ["tid", "task id", "task name", "coroutine stack", "awaiter chain",
              "awaiter name", "awaiter id"]
    return "\n".join([line(header), "-" * 180, *(line(r) for r in rows)]) + "\n"


_BOX = re.compile(r"^((?:│   |    )*)[└├]── (.*)$")


def prune_below(tree: str, labels: Iterable[str]) -> str:
    """The tree without the descendants of the nodes whose label starts with one of
    ``labels`` (what a tool that stops the stack at those frames would print)."""
    labels = tuple(labels)
    out: list[str] = []
    cut: int | None = None
    for line in tree.splitlines():
        match = _BOX.match(line)
        assert match, line
        depth = len(match.group(1)) // 4
        if cut is not None and depth > cut:
            continue
        cut = depth if match.group(2).startswith(labels) else None
        out.append(line)
    return "".join(line + "\n" for line in out)


def root_blocks(tree: str) -> list[str]:
    blocks: list[str] = []
    for line in tree.splitlines(keepends=True):
        if line.startswith("└── "):
            blocks.append("")
        blocks[-1] += line
    return blocks


def cpython_tool(python: Python, command: str, pid: int) -> subprocess.CompletedProcess:
    """``python3.X -m asyncio COMMAND PID``, retried: it races with the target now and then."""
    for _ in range(3):
        result = subprocess.run(python.argv("-m", "asyncio", command, str(pid)),
                                capture_output=True, text=True, errors="replace", timeout=120)
        if result.returncode == 0 or "await-graph contains cycles" in result.stderr:
            return result
    pytest.fail(f"{python} -m asyncio {command} failed 3 times: "
                f"{result.stdout[-1000:]}{result.stderr[-1000:]}")


@dataclass
class Outputs:
    python: Python
    pid: int
    tree: str          # aiobpf pstree
    ps: str            # aiobpf ps
    rows: list[list[str]]  # aiobpf ps --format csv
    their_tree: str    # the tool's pstree, with single spaces after the box characters
    their_ps: str


def _equal(o: Outputs) -> None:
    assert o.their_tree == o.tree
    assert o.their_ps == o.ps


def _stack_cut_at_first_frame(tasks: dict[str, str]) -> Callable[[Outputs], None]:
    """The tool stops these tasks' stacks at their outermost frame (named in ``tasks``)
    because what that frame awaits is not a coroutine; aiobpf follows it."""
    def check(o: Outputs) -> None:
        assert o.their_tree == prune_below(o.tree, (f"{frame} " for frame in tasks.values()))
        rows = [[*r[:3], r[3].split(" -> ")[-1] if r[2] in tasks else r[3], *r[4:]]
                for r in o.rows]
        for r in rows:
            if r[2] in tasks:
                assert r[3] == tasks[r[2]]
        assert o.their_ps == render_ps(rows)
    return check


def _custom_awaitables(o: Outputs) -> None:
    _stack_cut_at_first_frame({"legacy": "hold_legacy", "ticket": "hold_ticket",
                               "delegate": "hold_delegate"})(o)
    assert o.their_tree != o.tree  # aiobpf shows the frames below


def _threads(o: Outputs) -> None:
    if o.python.minor == (3, 14):
        # 3.14's tool shows the main thread's tasks only (python/cpython#149230).
        main_names = {r[2] for r in o.rows if r[0] == str(o.pid)}
        blocks = [b for b in root_blocks(o.tree)
                  if b.splitlines()[0].removeprefix("└── (T) ") in main_names]
        assert main_names == {"main", "main-child"}
        assert o.their_tree == "".join(blocks)
        assert o.their_ps == render_ps(r for r in o.rows if r[0] == str(o.pid))
    else:
        # 3.15's tool shows every thread, in the interpreter's thread order (newest
        # first), as aiobpf does.
        _equal(o)


_NO_BOX = {ord(c): None for c in "└├│─"}


def _non_ascii(o: Outputs) -> None:
    if o.python.minor >= (3, 15):
        _equal(o)
        return
    # 3.14's tool reads every string as ASCII: non-ASCII names and paths come out as
    # NULs or "<unknown function>"; everything else is the same.
    for ours, theirs in ((o.tree, o.their_tree), (o.ps, o.their_ps)):
        ours_lines, their_lines = ours.splitlines(), theirs.splitlines()
        assert len(ours_lines) == len(their_lines), theirs
        for mine, other in zip(ours_lines, their_lines, strict=True):
            if mine.translate(_NO_BOX).isascii():
                assert other == mine
            else:
                assert other != mine
                assert "\0" in other or "<unknown function>" in other, other


ORACLE: dict[str, Callable[[Outputs], None]] = {
    "nested_gather.py": _equal,
    "gather_exceptions.py": _equal,
    "done_awaiters.py": _equal,
    "shield.py": _equal,
    "timeouts.py": _equal,
    "wait.py": _equal,
    "as_completed.py": _equal,
    "nested_taskgroups.py": _equal,
    "task_chain.py": _equal,
    "sync_primitives.py": _equal,
    # The tool follows async generators (asend) but stops at anext()'s awaitable.
    "async_generators.py": _stack_cut_at_first_frame({"anext-default": "anext_default"}),
    "qualnames.py": _equal,
    "task_names.py": _equal,
    "eager_tasks.py": _equal,
    "threads.py": _threads,
    "custom_awaitables.py": _custom_awaitables,
    NON_ASCII: _non_ascii,
    "detached_gather.py": _equal,
}


@pytest.mark.parametrize("script", sorted(ORACLE))
@pytest.mark.parametrize("python", matrix_params(min_minor=(3, 14)))
def test_same_as_cpython_tool(python: Python, script: str, sid_proc) -> None:
    with run_target(python, script) as target:
        pid = target.pid
        tree, ps = aiobpf("pstree", str(pid)), aiobpf("ps", str(pid))
        assert tree.returncode == 0, tree.stderr
        assert ps.returncode == 0, ps.stderr
        rows = csv_rows(aiobpf("ps", str(pid), "--format", "csv"))
        their_tree = cpython_tool(python, "pstree", pid)
        their_ps = cpython_tool(python, "ps", pid)
        assert their_tree.stderr == their_ps.stderr == ""
        ORACLE[script](Outputs(python, pid, tree.stdout, ps.stdout, rows,
                               their_tree.stdout.replace("──  ", "── "), their_ps.stdout))


@pytest.mark.parametrize("python", matrix_params(min_minor=(3, 14)))
def test_cycle_same_as_cpython_tool(python: Python, sid_proc) -> None:
    with run_target(python, "await_cycle.py") as target:
        pid = target.pid
        ours, theirs = aiobpf("pstree", str(pid)), cpython_tool(python, "pstree", pid)
        assert (ours.returncode, ours.stdout, ours.stderr) == \
            (theirs.returncode, theirs.stdout, theirs.stderr)
        assert ours.returncode == 1
        ours, theirs = aiobpf("ps", str(pid)), cpython_tool(python, "ps", pid)
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
