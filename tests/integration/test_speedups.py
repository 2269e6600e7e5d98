"""The compiled loops against their Python reference on real memory: every interpreter,
every kind of await chain, read both ways from the same parked process, must give the
same document; and most objects must be decoded by the compiled loop (else it is not
what is tested, nor what makes reads fast).  ``tests/unit/test_speedups.py`` does the
same on generated, hostile input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aiobpf.collector import frames, memory, speedups
from aiobpf.collector.snapshot import Collector
from aiobpf.collector.target import open_target
from aiobpf.exporters.json_doc import document
from tests.conftest import aiobpf, matrix_params, run_target
from tests.pythons import Python, by_label

COPIES = 30
# many_shapes.py: per copy ten tasks, a TaskGroup's child and gather's three; and main
TASKS = 14 * COPIES + 1


def _doc(collector: Collector) -> dict:
    collector.forget()
    doc = document(collector.snapshot())
    for key in ("taken_at", "duration_s"):
        doc.pop(key)
    return doc


@pytest.mark.parametrize("python", matrix_params())
def test_compiled_and_python_loops_read_the_same_tasks(python: Python,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert speedups.COMPILED, speedups.NOT_COMPILED
    decided = in_python = 0
    compiled_level, python_step = speedups.known_level, frames.Frames._decode

    def counting(*args: Any) -> tuple:
        nonlocal decided
        result = compiled_level(*args)
        decided += len(args[2]) - len(result[2])
        return result

    def counted_step(*args: Any) -> int:
        nonlocal in_python
        in_python += 1
        return python_step(*args)

    monkeypatch.setattr(frames.Frames, "_decode", counted_step)
    with run_target(python, "many_shapes.py", str(COPIES)) as target:
        collector = Collector(open_target(target.pid))
        try:
            monkeypatch.setattr(frames, "known_level", counting)
            compiled_doc = _doc(collector)
            monkeypatch.setattr(frames, "known_level", speedups.known_level_py)
            monkeypatch.setattr(memory, "plan_runs", speedups.plan_runs_py)
            python_doc = _doc(collector)
        finally:
            collector.close()
    assert len(compiled_doc["tasks"]) == TASKS
    assert compiled_doc == python_doc
    # The first copies teach it; the rest are decoded in C.
    assert decided > 3 * in_python, (decided, in_python)


def test_pure_python_is_chosen_by_the_environment_and_shown_by_doctor() -> None:
    with run_target(by_label("sid-3.14"), "many_shapes.py", "3") as target:
        fast = aiobpf("ps", str(target.pid), "--format", "json")
        slow = aiobpf("ps", str(target.pid), "--format", "json", env={"AIOBPF_PURE_PYTHON": "1"})
    assert fast.returncode == slow.returncode == 0, (fast.stderr, slow.stderr)
    assert json.loads(fast.stdout)["tasks"] == json.loads(slow.stdout)["tasks"]
    doctor = aiobpf("doctor", "--json", env={"AIOBPF_PURE_PYTHON": "1"})
    check = next(c for c in json.loads(doctor.stdout) if c["name"] == "compiled loops")
    assert check["status"] == "warn" and "AIOBPF_PURE_PYTHON=1" in check["detail"]
    doctor = aiobpf("doctor", "--json")
    check = next(c for c in json.loads(doctor.stdout) if c["name"] == "compiled loops")
    assert check["status"] == "ok", check
