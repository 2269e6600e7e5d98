"""Tasks that start eagerly (3.12+), with real interpreters and real BPF.

An eager task's first step runs inside ``Task.__init__``, itself inside the step that
created the task, where the step probes never see it.  The target (eager_counts.py)
creates, per round, N tasks that finish during their eager step, N that suspend in it
and N ordinary ones:

- Task's init is found on every 3.12+ build (its ``PyType_Spec`` slots on stripped
  ones), where .symtab has it too;
- the daemon's ``aiobpf_tasks_created_total`` and ``..._finished_total`` are exact in
  full capture (not derived from finished tasks, which never counted eager ones);
- ``aiobpf trace`` shows every eager first step, and the step that ran them does not
  count their time.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from aiobpf.collector.model import Step
from aiobpf.collector.probes import TASK_INIT, _Tables, _task_init_from_spec
from aiobpf.collector.target import open_target
from aiobpf.exporters.trace import ChromeTrace, TraceSummary
from tests.conftest import RunningTarget, matrix_params, require, run_target
from tests.integration.daemon_proc import daemon_uprobes, run_daemon
from tests.pythons import Python, all_pythons

N = 20
BUSY_MS = 5.0
SELECT = r"/eager_counts\.py "
REPO = Path(__file__).resolve().parents[2]


def _round(target: RunningTarget) -> tuple[int, int]:
    """Start one round; (tasks created, tasks finished) once it is over."""
    assert target.proc.stdin is not None and target.proc.stdout is not None
    target.proc.stdin.write("go\n")
    target.proc.stdin.flush()
    line = target.proc.stdout.readline().split()
    assert line[:1] == ["DONE"], line
    return int(line[1]), int(line[2])


@pytest.mark.parametrize("python", matrix_params((3, 12)))
def test_task_init_is_found_on_every_build(python: Python) -> None:
    with run_target(python, "eager_counts.py", "1", "0", stdin=True) as target:
        found = open_target(target.pid)
        holder = found.asyncio or found.core
        by_spec = _task_init_from_spec(_Tables(holder.image))
        assert by_spec
        symbol = holder.image.symbols({TASK_INIT}, tables=(".symtab",)).get(TASK_INIT)
        if not python.stripped:
            assert symbol is not None
        if symbol is not None:
            assert by_spec == symbol, (hex(by_spec), hex(symbol))


def test_daemon_counts_eager_tasks_exactly(tmp_path: Path) -> None:
    """One daemon, every 3.12+ interpreter of the matrix at once: after two rounds
    (6N + 2 tasks, 4N of them eager), created and finished are exact."""
    pythons = [p for p in all_pythons() if p.minor >= (3, 12)]
    for python in pythons:
        require(python)
    with ExitStack() as stack:
        targets = [stack.enter_context(run_target(p, "eager_counts.py", str(N), "0.2",
                                                  stdin=True)) for p in pythons]
        daemon = stack.enter_context(run_daemon(tmp_path, select=SELECT))
        for target in targets:
            daemon.wait_traced(target.pid, timeout=30)
        # counts start at the daemon's first look after the probes are placed
        time.sleep(2.5)
        expected = {t.pid: [sum(x) for x in zip(_round(t), _round(t), strict=True)]
                    for t in targets}

        def counts(pid: int) -> list[float]:
            values = []
            for name in ("aiobpf_tasks_created_total", "aiobpf_tasks_finished_total"):
                series = daemon.series(name, pid)
                values.append(float(series[0].rsplit(" ", 1)[1]) if series else -1.0)
            return values

        deadline = time.monotonic() + 10
        got = {t.pid: counts(t.pid) for t in targets}
        while got != expected and time.monotonic() < deadline:
            time.sleep(0.5)
            got = {t.pid: counts(t.pid) for t in targets}
        labels = {t.pid: t.python.label for t in targets}
        assert got == expected, {labels[p]: (got[p], expected[p]) for p in got}
        for target in targets:
            assert daemon.series("aiobpf_process_info", target.pid)[0].find(
                'capture="full"') > 0


def _trace(target: RunningTarget, rounds: int = 1) -> list[dict]:
    """JSON lines of ``aiobpf trace`` over ``rounds`` rounds of the target."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "AIOBPF_SOCKET": "/nonexistent"}
    proc = subprocess.Popen([sys.executable, "-m", "aiobpf", "trace", str(target.pid),
                             "--duration", "60"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not daemon_uprobes(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.2)
        for _ in range(rounds):
            _round(target)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "lost" not in err, err
    lines = [json.loads(line) for line in out.splitlines()]
    return [line for line in lines if line["type"] == "step"]   # (then a summary line)


@pytest.mark.parametrize("python", matrix_params((3, 12)))
def test_trace_shows_eager_first_steps(python: Python) -> None:
    with run_target(python, "eager_counts.py", str(N), str(BUSY_MS), stdin=True) as target:
        steps = _trace(target)
    busy = BUSY_MS * 1e6
    by_name: dict[str, list[dict]] = {}
    for step in steps:
        by_name.setdefault(re.sub(r"-\d+$", "", step["name"]), []).append(step)
    eager = [s for s in steps if s["eager"]]
    done = [s for s in eager if s["state"] == "finished"]
    first = [s for s in eager if s["state"] == "suspended"]
    assert len(done) == len(first) == N, [(s["name"], s["state"]) for s in eager]
    assert {s["task"] for s in first} == {s["task"] for s in by_name["eager-wait"]}
    assert all("wait_once" in [f["name"] for f in s["frames"]] for s in first)
    assert all(s["duration_ns"] >= busy for s in eager)
    assert not any(s["eager"] for s in by_name["plain"] + by_name["driver"])
    if python.minor >= (3, 14):   # before, create_task names a task after its eager step
        assert {s["name"] for s in done} == {f"eager-done-{i}" for i in range(N)}
    # The driver's first step created them all: it ran 2N eager steps, not counted in it.
    # (Its own time is what ran between them, preemption included on a busy machine.)
    creating = by_name["driver"][0]
    assert creating["nested_ns"] == sum(s["duration_ns"] + s["nested_ns"] for s in eager)
    assert creating["nested_ns"] >= 2 * N * busy > creating["duration_ns"], creating


def test_chrome_trace_spans_nested_eager_steps() -> None:
    """A slice spans its whole step (its own time and its eager steps'): on a thread's
    track eager steps nest inside it; its own time is in its args."""
    parent = Step(1, "driver", 7, 1_000_000, 300_000, 0, "suspended", nested_ns=4_000_000)
    child = Step(2, "eager-done-0", 7, 1_100_000, 4_000_000, 0, "finished", eager=True)
    out = io.StringIO()
    trace = ChromeTrace(out, 42, "thread")
    trace.add(parent)
    trace.add(child)
    trace.close(TraceSummary(steps=2, events_lost=0, unmeasured=0))
    events = [e for e in json.loads(out.getvalue())["traceEvents"] if e["ph"] == "X"]
    assert [(e["ts"], e["dur"]) for e in events] == [(0, 4300), (100, 4000)]
    assert events[0]["args"]["own_us"] == 300 and not events[0]["args"]["eager"]
    assert events[1]["args"]["eager"] is True
