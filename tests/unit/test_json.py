"""The JSON document: valid against its schema, and saying what the text hides."""

from __future__ import annotations

import json

import jsonschema
import pytest

from aiobpf.collector.model import Awaiter, Frame, Snapshot, Task, Thread
from aiobpf.exporters import json_doc
from tests.conftest import SCHEMA


def sample() -> Snapshot:
    main = Task(0x10, "main", 100, "running",
                [Frame("main", "/a.py", 3), Frame("crunch", "/a.py", 9, "function")])
    child = Task(0x20, "chïld-✓", 101, "pending",
                 [Frame("work", "/ä.py", 5), Frame("agen", "/ä.py", 7, "async_generator")],
                 [Awaiter(0x10), Awaiter(0x30, is_task=False, type_name="_GatheringFuture")],
                 awaits="_asyncio.Future 0x40", errors=["a coroutine changed while it was read"])
    return Snapshot(123, "3.12.1", "release, with DWARF", "/usr/bin/python3.12",
                    [Thread(100, 1400, 0, 0, 0x10), Thread(101, 1401, 0)], [main, child],
                    1_700_000_000.5, 0.0042, {"table 3.12.1": 120}, ["w"])


def test_document_is_valid() -> None:
    doc = json.loads(json_doc.render(sample()))
    jsonschema.validate(doc, SCHEMA)


def test_document_content() -> None:
    doc = json_doc.document(sample())
    assert doc["pid"] == 123 and doc["python"]["version"] == "3.12.1"
    assert doc["threads"][0] == {"thread_id": 100, "python_thread_id": 1400,
                                 "interpreter_id": 0, "running_task": "0x10"}
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
