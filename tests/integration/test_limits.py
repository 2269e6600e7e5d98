"""Where python3.14 -m asyncio gives up or shows too little, aiobpf must not.

- a task list longer than 65,536 ("Task list appears corrupted" in 3.14's tool);
- a task that is running (blocking its loop in synchronous code): its frames are
  read from its thread's stack down to its coroutine.
"""

from __future__ import annotations

import pytest

from tests.conftest import TARGETS, aiobpf, matrix_params, run_target
from tests.pythons import Python, by_label


def _line_of(marker: str, script: str) -> int:
    for number, line in enumerate((TARGETS / script).read_text().splitlines(), 1):
        if marker in line:
            return number
    raise AssertionError(marker)


def test_seventy_thousand_tasks() -> None:
    python = by_label("sid-3.14")
    with run_target(python, "many_tasks.py", "70000") as target:
        result = aiobpf("ps", str(target.pid), "--format", "json", timeout=600)
        assert result.returncode == 0, result.stderr
        tasks = result.json()["tasks"]
        leaves = [t for t in tasks if t["name"].startswith("leaf-")]
        assert len(leaves) == 70000
        assert {t["name"] for t in leaves} == {f"leaf-{i}" for i in range(70000)}
        assert all([f["name"] for f in t["frames"]][:3] == ["leaf", "middle", "inner"]
                   for t in leaves)
        assert all(t["awaited_by"] and t["awaited_by"][0]["name"].startswith("group-")
                   for t in leaves)


@pytest.mark.parametrize("python", matrix_params())
def test_running_task_shows_its_thread_stack(python: Python) -> None:
    with run_target(python, "running_task.py") as target:
        result = aiobpf("ps", str(target.pid), "--format", "json")
        assert result.returncode == 0, result.stderr
        tasks = {t["name"]: t for t in result.json()["tasks"]}
        blocker = tasks["blocker"]
        assert blocker["state"] == "running"
        assert blocker["errors"] == []
        frames = [(f["name"], f["line"], f["kind"]) for f in blocker["frames"]]
        assert frames == [
            ("blocker", _line_of("CALLS-CRUNCH", "running_task.py"), "coroutine"),
            ("crunch", _line_of("BLOCKING", "running_task.py"), "function"),
        ]
        assert tasks["waiter"]["state"] == "pending"
        assert tasks["waiter"]["frames"][0]["line"] == _line_of("WAITER-AWAIT", "running_task.py")
        # the text outputs say which task was running; CSV keeps names only
        tree = aiobpf("pstree", str(target.pid))
        assert "(T) blocker [running]" in tree.stdout, tree.stdout
        assert "(T) waiter\n" in tree.stdout and "waiter [" not in tree.stdout
        table = aiobpf("ps", str(target.pid))
        assert "blocker [running]" in table.stdout, table.stdout
        csv_out = aiobpf("ps", str(target.pid), "--format", "csv")
        assert "[running]" not in csv_out.stdout and "blocker" in csv_out.stdout


@pytest.mark.parametrize("python", matrix_params(min_minor=(3, 12)))
def test_a_task_running_an_eager_task_is_read_whole(python: Python) -> None:
    """A task whose step started an eager task is running too: its frames are found
    below the eager task's on the thread's stack, without an error (they were marked
    "thread's stack was not found", which made --capture auto turn to BPF)."""
    with run_target(python, "eager_running.py") as target:
        result = aiobpf("ps", str(target.pid), "--format", "json", "--capture", "memory")
        assert result.returncode == 0, result.stderr
        tasks = {t["name"]: t for t in result.json()["tasks"]}
        assert tasks["outer"]["state"] == "running" and tasks["outer"]["errors"] == []
        if python.minor >= (3, 14):   # 3.12-3.13 list an eager task after its first step
            assert tasks["inner"]["state"] == "running" and tasks["inner"]["errors"] == []
            frames = [(f["name"], f["line"]) for f in tasks["inner"]["frames"]]
            assert frames == [("inner", _line_of("CALLS-BLOCK", "eager_running.py")),
                              ("block", _line_of("BLOCKING", "eager_running.py"))]
        outer = [(f["name"], f["line"]) for f in tasks["outer"]["frames"]]
        assert outer[0] == ("outer", _line_of("STARTS-INNER", "eager_running.py")), outer
        assert "inner" not in [name for name, _ in outer], outer
