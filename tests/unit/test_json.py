"""The JSON document: valid against its schema, and saying what the text hides."""

from __future__ import annotations

import json

import jsonschema
import pytest

from aiobpf.collector.model import Awaiter, Frame, Snapshot, Task, Thread
from aiobpf.collector.snapshot import settle_running
from aiobpf.exporters import json_doc
from tests.conftest import SCHEMA


def sample() -> Snapshot:
    main = Task(0x10, "main", 100, "running",
                [Frame("main", "/a.py", 3), Frame("crunch", "/a.py", 9, "function")])
    child = Task(0x20, "chïld-✓", 101, "pending",
                 [Frame("work", "/ä.py", 5), Frame("agen", "/ä.py", 7, "async_generator")],
                 [Awaiter(0x10), Awaiter(0x30, is_task=False, type_name="_GatheringFuture")],
                 awaits="_asyncio.Future 0x40", errors=("a coroutine changed while it was read",))
    return Snapshot(123, "3.12.1", "release, with DWARF", "/usr/bin/python3.12",
                    [Thread(100, 1400, 0, 0, 0x10), Thread(101, 1401, 0)], [main, child],
                    1_700_000_000.5, 0.0042, {"table 3.12.1": 120}, ["w"])


def test_document_is_valid() -> None:
    doc = json.loads(json_doc.render(sample()))
    jsonschema.validate(doc, SCHEMA)


def test_the_document_holds_threads_tasks_frames_and_awaiters() -> None:
    doc = json_doc.document(sample())
    assert doc["pid"] == 123 and doc["python"]["version"] == "3.12.1"
    assert doc["threads"][0] == {"thread_id": 100, "python_thread_id": 1400,
                                 "interpreter_id": 0, "running_task": "0x10",
                                 "running_task_note": None}
    main, child = doc["tasks"]
    assert main["state"] == "running"
    assert [f["name"] for f in main["frames"]] == ["main", "crunch"]   # outermost first
    assert main["frames"][1]["kind"] == "function"
    assert child["name"] == "chïld-✓"
    assert child["awaited_by"] == [{"id": "0x10", "is_task": True, "name": "main"},
                                   {"id": "0x30", "is_task": False, "name": "_GatheringFuture"}]
    assert child["awaits"] == "_asyncio.Future 0x40"
    assert child["errors"] == ["a coroutine changed while it was read"]
    assert doc["taken_at"].startswith("2023-11-14T22:13:20.5")
    assert doc["cycles"] == []


def test_a_thread_names_a_running_task_of_the_document() -> None:
    """The thread is read before its tasks: what it named running may have suspended
    or finished by then, and others been seen running (issue 12)."""
    def tasks(*states: str) -> list[Task]:
        return [Task(0x10 * (i + 1), f"t{i}", 100, state, []) for i, state in enumerate(states)]

    def settle(found: list[Task], named: int, truncated: bool = False) -> Thread:
        thread = Thread(100, 1400, 0, 0, named)
        settle_running([thread], found, {100: named} if named else {}, truncated)
        return thread

    both = tasks("running", "running")           # an eager step inside its parent's
    assert (settle(both, 0x10).running_task, settle(both, 0x10).running_note) == (0x10, None)
    assert settle(both, 0).running_task == 0x20   # nothing named (3.11-3.13): the last read
    moved = settle(tasks("pending", "running"), 0x10)
    assert moved.running_task == 0x20
    assert moved.running_note == ("task 0x10 was running when the read began, and had "
                                  "suspended by the time it was read")
    gone = settle(tasks("pending"), 0x99)
    assert gone.running_task == 0 and "0x99" in str(gone.running_note)
    assert "finished before they were read" in str(gone.running_note)
    assert "more tasks than aiobpf reads" in str(settle(tasks(), 0x99, True).running_note)
    idle = settle(tasks("pending"), 0)
    assert (idle.running_task, idle.running_note) == (0, None)
    doc = json_doc.document(Snapshot(1, "3.14.0", "", "", [gone], tasks("pending"), 0.0, 0.0))
    jsonschema.validate(doc, SCHEMA)
    assert doc["threads"][0]["running_task"] is None


def test_cycles_are_listed() -> None:
    s = sample()
    s.tasks[0].awaited_by.append(Awaiter(0x20))
    doc = json_doc.document(s)
    assert doc["cycles"] == [["0x20", "0x10", "0x20"]]  # found from the first awaiter
    jsonschema.validate(doc, SCHEMA)


@pytest.mark.parametrize("broken", [
    {"schema": 2},
    {"tasks": [{"id": "16"}]},
    {"capture": "guess"},
])
def test_schema_rejects_what_aiobpf_never_writes(broken: dict) -> None:
    doc = {**json_doc.document(sample()), **broken}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)
