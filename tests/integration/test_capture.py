"""BPF capture at the task step and wakeup points, with real uprobes on real targets.

- probe sites are found on every build of the matrix, stripped ones included, and
  the method-table and type-table routes agree with .symtab wherever it exists;
- records come from the BPF map, marked as such, and are right;
- under churn, BPF-sourced stacks are always real suspension points;
- `aiobpf trace` writes valid JSON lines and a valid Chrome/Perfetto trace whose step
  count equals the BPF step counter, that say how many events were lost, and that
  leave out the steps whose end is not known (before the loop was seen waiting);
- nothing stays in the kernel after exit, SIGINT, SIGTERM or SIGKILL.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aiobpf.bpf.abi import CAPTURE_SUSPENDED
from aiobpf.bpf.capture import Capture
from aiobpf.bpf.maps import BATCH_ENTRIES
from aiobpf.collector import probe_cost
from aiobpf.collector.elf import find_debug_file
from aiobpf.collector.probes import STEP_FUNCTIONS, _from_method_table, _from_type, _Tables
from aiobpf.collector.snapshot import Collector
from aiobpf.collector.target import open_target
from aiobpf.daemon.budget.cost import step_cost
from aiobpf.exporters import json_doc
from tests.conftest import TARGETS, aiobpf, matrix_params, run_target
from tests.integration.daemon_proc import (
    bpf_object_exists,
    bpf_objects_left,
    link_ids,
    probes_of,
    program_ids,
)
from tests.integration.test_churn import check_ids
from tests.pythons import Python, by_label

REPO = Path(__file__).resolve().parents[2]


def _lines(script: str, *markers: str) -> dict[str, int]:
    text = (TARGETS / script).read_text().splitlines()
    return {m: next(n for n, line in enumerate(text, 1) if line.rstrip().endswith(f"# {m}"))
            for m in markers}


@pytest.fixture(scope="module")
def capture():
    cap = Capture()
    yield cap
    cap.close()


@pytest.mark.parametrize("python", matrix_params())
def test_probe_sites_on_every_build(python: Python) -> None:
    with run_target(python, "seed_app.py") as target:
        found = open_target(target.pid)
        holder = found.asyncio or found.core
        tables = _Tables(holder.image)
        by_tables = {"task_wakeup": _from_method_table(tables),
                     "TaskStepMethWrapper_call": (_from_type(tables, found.layout["type.call"])
                                                  or (None,))[0]}
        assert all(by_tables.values()), by_tables
        symbols = holder.image.symbols(set(STEP_FUNCTIONS), tables=(".symtab",))
        if not symbols:
            debug = find_debug_file(holder.image, [Path(f"/proc/{target.pid}/root/usr/lib/debug")])
            symbols = debug.symbols(set(STEP_FUNCTIONS), tables=(".symtab",)) if debug else {}
        if not python.stripped:
            assert set(symbols) == set(STEP_FUNCTIONS)
        for name, addr in symbols.items():
            assert by_tables[name] == addr, (name, hex(addr), hex(by_tables[name] or 0))


@pytest.mark.parametrize("python", matrix_params())
def test_records_come_from_the_bpf_map(python: Python, capture: Capture) -> None:
    lines = _lines("alternating.py", "SITE-A", "SITE-B")
    with run_target(python, "alternating.py", "20") as target:
        found = open_target(target.pid)
        attachment = capture.add(found)
        try:
            assert attachment.active, attachment.notes
            time.sleep(0.5)
            records = capture.records(target.pid)
            stats = capture.stats(target.pid)
            assert stats is not None and stats.steps > 100 and stats.read_errors == 0
            snapshot = Collector(found).snapshot(records=records)
        finally:
            capture.remove(target.pid)
        workers = [t for t in snapshot.tasks if t.name.startswith("w")]
        assert len(workers) == 20
        assert all(records[t.id].state == CAPTURE_SUSPENDED for t in workers)
        from_bpf = [t for t in workers if t.source == "bpf"]
        assert len(from_bpf) >= 15
        for task in from_bpf:
            worker = task.frames[0]
            assert worker.name == "worker" and worker.filename == target.script
            assert worker.line in lines.values()
            inner = [f.name for f in task.frames[1:]]
            assert inner[:1] == (["Queue.get"] if worker.line == lines["SITE-A"] else ["sleep"])


def test_json_marks_bpf_records() -> None:
    lines = _lines("alternating.py", "SITE-A", "SITE-B")
    with run_target(by_label("sid-3.14"), "alternating.py", "20") as target:
        result = aiobpf("ps", str(target.pid), "--format", "json", "--capture", "bpf")
        assert result.returncode == 0, result.stderr
        doc = result.json()
        assert doc["capture"] == "bpf+memory"
        sources = {t["name"]: t["source"] for t in doc["tasks"]}
        assert sources["Task-1"] == "memory"  # main only awaits gather(): it never steps
        assert sum(s == "bpf" for name, s in sources.items() if name.startswith("w")) >= 15
        for task in doc["tasks"]:
            if task["source"] == "bpf":
                assert task["frames"][0]["line"] in lines.values()


@pytest.mark.parametrize("python", [by_label("sid-3.14"), by_label("debian-3.11")],
                         ids=str)
def test_bpf_dumps_of_a_busy_target_are_consistent(python: Python, capture: Capture) -> None:
    """200 consecutive dumps of the churn target with records from the BPF map."""
    text = (TARGETS / "churn.py").read_text().splitlines()
    suspension = {n for n, line in enumerate(text, 1) if "await " in line or "async def" in line}
    with run_target(python, "churn.py", "1500") as target:
        found = open_target(target.pid)
        capture.add(found)
        collector = Collector(found)
        try:
            time.sleep(0.3)
            from_bpf = 0
            for _ in range(200):
                snapshot = collector.snapshot(records=capture.records(target.pid))
                check_ids(json_doc.document(snapshot))   # every id is a task of it
                for task in snapshot.tasks:
                    if task.source != "bpf":
                        continue
                    from_bpf += 1
                    assert not task.errors, task
                    for frame in task.frames:
                        if frame.filename == target.script:
                            assert frame.line in suspension, (task, frame)
            assert from_bpf > 200 * 100
        finally:
            capture.remove(target.pid)


def test_capture_off_is_said_in_one_line() -> None:
    """With CAP_SYS_PTRACE but no BPF privileges: memory read, and one line saying why."""
    with run_target(by_label("sid-3.14"), "seed_app.py") as target:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": "/tmp"}
        argv = ["setpriv", "--inh-caps=-all,+sys_ptrace", "--ambient-caps=-all,+sys_ptrace",
                "--bounding-set=-all,+sys_ptrace", "--reuid=0",
                sys.executable, "-m", "aiobpf", "pstree", str(target.pid), "--capture", "bpf"]
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "(T) foo1.0" in out.stdout
        notes = [line for line in out.stderr.splitlines() if line]
        assert len(notes) == 1 and "BPF capture is off" in notes[0], out.stderr
        assert "Traceback" not in out.stderr


# -- aiobpf trace -------------------------------------------------------------------------
STEP_KEYS = {"type", "pid", "task", "name", "thread_id", "start_ns", "start_unix_ns",
             "duration_ns", "wake_delay_ns", "state", "eager", "nested_ns", "frames"}


def test_trace_json_lines() -> None:
    with run_target(by_label("pyenv-3.12.1") if by_label("pyenv-3.12.1").available()
                    else by_label("sid-3.14"), "alternating.py", "10", "0.001") as target:
        result = aiobpf("trace", str(target.pid), "--duration", "1")
        assert result.returncode == 0, result.stderr
        *steps, summary = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(steps) > 100
        traced = int(result.stderr.split("traced ")[1].split()[0])
        assert traced == len(steps)
        assert summary == {"type": "summary", "pid": target.pid, "steps": traced,
                           "events_lost": 0, "unmeasured_steps": summary["unmeasured_steps"]}
        for step in steps:
            assert set(step) == STEP_KEYS
            assert step["type"] == "step" and step["pid"] == target.pid
            assert step["task"].startswith("0x") and step["duration_ns"] >= 0
            assert step["state"] in ("suspended", "finished", "running", "created")
            assert all(set(f) == {"name", "filename", "line", "kind"} for f in step["frames"])
        starts = [s["start_ns"] for s in steps if s["thread_id"] == target.pid]
        assert starts == sorted(starts)


def test_trace_file_is_a_valid_chrome_trace(tmp_path: Path) -> None:
    out = tmp_path / "trace.json"
    with run_target(by_label("sid-3.14"), "alternating.py", "10", "0.001") as target:
        result = aiobpf("trace", str(target.pid), "--duration", "1", "-o", str(out))
        assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert set(doc) == {"traceEvents", "displayTimeUnit", "otherData"}
    slices = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    meta = [e for e in doc["traceEvents"] if e["ph"] == "M"]
    traced = int(result.stderr.split("traced ")[1].split()[0])
    assert len(slices) == traced > 100 and "lost" not in result.stderr
    assert doc["otherData"]["steps"] == traced and doc["otherData"]["events_lost"] == 0
    tracks = {e["tid"] for e in slices}
    assert tracks == {e["tid"] for e in meta if e["name"] == "thread_name"}
    for event in slices:
        assert {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"} <= set(event)
        assert isinstance(event["ts"], int | float) and event["ts"] >= 0
        assert isinstance(event["dur"], int | float) and event["dur"] >= 0
        assert isinstance(event["tid"], int) and event["pid"] == target.pid
    names = {e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert sum(n.startswith("w") for n in names) == 10


def test_trace_leaves_out_steps_whose_end_is_unknown() -> None:
    """Until a thread's loop has been seen waiting, the syscall hooks may not have seen
    its waits: a step then ends only when the next one starts, absorbing the loop's I/O
    wait (and its wake delay is unknown, 0).  Each thread's trace starts at its first
    step with a known wake delay: every step written is short, and apart from its
    task's next step by the target's known gap."""
    gap = 0.1
    with run_target(by_label("sid-3.14"), "known_gaps.py", str(gap)) as target:
        result = aiobpf("trace", str(target.pid), "--duration", "1.5")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    steps = [line for line in lines if line["type"] == "step"]
    assert [s for s in steps if s["wake_delay_ns"] == 0] == []
    assert len({s["thread_id"] for s in steps}) == 2
    assert {s["name"] for s in steps} == {"sleeper-0", "sleeper-1", "sleeper-2", "reader",
                                           "sleeper-2-0", "sleeper-2-1"}
    assert max(s["duration_ns"] for s in steps) < gap / 2 * 1e9
    by_task: dict[str, list[dict]] = {}
    for step in steps:
        by_task.setdefault(step["task"], []).append(step)
    for task_steps in by_task.values():
        for step, after in itertools.pairwise(task_steps):
            assert after["start_ns"] - step["start_ns"] - step["duration_ns"] > gap / 4 * 1e9
    assert lines[-1]["type"] == "summary" and lines[-1]["steps"] == len(steps)
    assert lines[-1]["unmeasured_steps"] >= 2   # each thread's first step, at least


def test_trace_file_says_how_many_events_were_lost(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With a ring buffer of one page (an internal setting), events are lost: the trace
    file, and the JSON lines' summary, say how many, as the programs counted them."""
    monkeypatch.setenv("AIOBPF_TRACE_RING_PAGES", "1")
    out = tmp_path / "trace.json"
    with run_target(by_label("sid-3.14"), "alternating.py", "10", "0.001") as target:
        to_file = aiobpf("trace", str(target.pid), "--duration", "1", "-o", str(out))
        to_stdout = aiobpf("trace", str(target.pid), "--duration", "1")
    for result in (to_file, to_stdout):
        assert result.returncode == 0, result.stderr
    other = json.loads(out.read_text())["otherData"]
    slices = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X"]
    assert other["steps"] == len(slices)
    assert other["events_lost"] == int(to_file.stderr.split("(")[1].split()[0]) > 100
    *steps, summary = [json.loads(line) for line in to_stdout.stdout.splitlines()]
    assert summary["type"] == "summary" and summary["steps"] == len(steps)
    assert summary["events_lost"] == int(to_stdout.stderr.split("(")[1].split()[0]) > 100


def test_trace_step_count_equals_the_bpf_counter(capture: Capture) -> None:
    """Every step the programs count reaches user space as one event: once the target
    is stopped (SIGSTOP: no program runs for it any more) and the ring buffer drained,
    the events seen equal the programs' count exactly, with the process's settings
    rewritten all along (a busy target: bursty.py's workers step back to back)."""
    with run_target(by_label("sid-3.14"), "bursty.py", "4", "on:60", "30") as target:
        found = open_target(target.pid)
        capture.add(found, trace=True)
        seen: list[int] = []
        capture.on_steps(lambda r: seen.append(r.task) if r.pid == target.pid else None)
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            capture.poll(50)
            for _ in range(200):   # settings written while the programs count: none lost
                capture.set_trace(target.pid, True)
        os.kill(target.pid, signal.SIGSTOP)
        try:
            _wait_stopped(target.pid)
            drained = -1
            while drained != len(seen):   # until a poll brings nothing more
                drained = len(seen)
                capture.poll(100)
            stats = capture.stats(target.pid)
        finally:
            os.kill(target.pid, signal.SIGCONT)
        capture.remove(target.pid)
        assert stats is not None and stats.events_lost == 0
        assert len(seen) > 100
        assert stats.captures == len(seen)


def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Until every thread of ``pid`` is stopped (state T in /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                  for tid in os.listdir(f"/proc/{pid}/task")}
        if states == {"T"}:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop")


def _own_uprobes() -> int:
    return sum(1 for e in probes_of(os.getpid()) if e["fd_type"] in ("uprobe", "uretprobe"))


def test_what_a_step_costs_is_measured(capture: Capture) -> None:
    """The trap of a uprobe hit, a call through a uprobe and a uretprobe (Task.__init__:
    a task created) and the syscall hooks' toll are timed on this machine (and leave no
    probe or hook behind); the programs add up their own time per step."""
    hooks, uprobes = capture.wait_hooks, _own_uprobes()
    costs = probe_cost.measure(capture)
    assert 0.02e-6 < costs.trap_s < costs.created_s < 100e-6
    assert 0.0 < costs.syscall_s < 10e-6
    assert capture.wait_hooks == hooks
    assert _own_uprobes() == uprobes
    with run_target(by_label("sid-3.14"), "alternating.py", "10", "0.001") as target:
        capture.add(open_target(target.pid))
        time.sleep(1)
        stats = capture.stats(target.pid)
        capture.remove(target.pid)
    assert stats is not None and stats.steps > 100
    program = stats.prog_ns_sum / 1e9 / stats.steps
    assert 0.01e-6 < program < 50e-6
    print(f"uprobe hit {1e6 * costs.trap_s:.2f} us, with a uretprobe {1e6 * costs.created_s:.2f}"
          f" us, syscall hooks {1e6 * costs.syscall_s:.2f} "
          f"us per call, programs {1e6 * program:.2f} us per step: "
          f"{1e6 * step_cost(costs, program):.2f} us per captured step")


def test_records_of_thousands_of_tasks(capture: Capture) -> None:
    """More records than one batch read (BATCH_ENTRIES) holds: all of them come back,
    and only the asked process's."""
    with (run_target(by_label("sid-3.14"), "alternating.py", "3000", "0.01") as many,
          run_target(by_label("sid-3.14"), "alternating.py", "10", "0.001") as other):
        capture.add(open_target(many.pid))
        capture.add(open_target(other.pid))
        try:
            # The ring's 1500 items reach its last worker after 1500 hops of at least
            # 10 ms each: every worker has stepped after 15 s at best, longer on a busy VM.
            deadline = time.monotonic() + 60
            while len(records := capture.records(many.pid)) < 3000:
                assert time.monotonic() < deadline, f"{len(records)} records after 60 s"
                time.sleep(0.5)
            assert len(records) == 3000 > BATCH_ENTRIES
            assert all(r.pid == many.pid for r in records.values())
            assert len(capture.records(other.pid)) == 10
            capture.remove(many.pid)
            assert capture.records(many.pid) == {}
            assert len(capture.records(other.pid)) == 10
        finally:   # the module's capture serves the next tests: leave it as found
            capture.remove(many.pid)
            capture.remove(other.pid)


# -- nothing left behind --------------------------------------------------------------------
@pytest.mark.parametrize("how", ["exit", "SIGINT", "SIGTERM", "SIGKILL"])
def test_nothing_stays_in_the_kernel(how: str) -> None:
    """aiobpf trace ended each way leaves none of the programs and links it held (read
    from its own descriptors while it ran, then looked up by id: other processes'
    programs, of the same names, do not count)."""
    with run_target(by_label("sid-3.14"), "alternating.py", "10", "0.001") as target:
        duration = "4" if how == "exit" else "60"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        tracer = subprocess.Popen([sys.executable, "-m", "aiobpf", "trace", str(target.pid),
                                   "--duration", duration],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        programs: set[int] = set()
        links: set[int] = set()
        try:
            deadline = time.monotonic() + 60
            while not (programs and links) and time.monotonic() < deadline:
                assert tracer.poll() is None, tracer.stderr.read().decode()
                programs, links = program_ids(tracer.pid), link_ids(tracer.pid)
                time.sleep(0.1)
            assert programs and links, "the tracer never held its programs and probes"
            assert all(bpf_object_exists("prog", i) for i in programs)
            if how != "exit":
                tracer.send_signal(getattr(signal, how))
            _, err = tracer.communicate(timeout=60)
        finally:
            if tracer.poll() is None:
                tracer.kill()
                tracer.wait()
        assert "Traceback" not in err.decode()
        assert bpf_objects_left(programs, links) == []
        assert target.proc.poll() is None  # the target never noticed
        uprobes = Path("/sys/kernel/tracing/uprobe_events")
        if uprobes.exists():
            assert "aiobpf" not in uprobes.read_text()


def test_one_probe_set_per_file_for_many_processes(capture: Capture) -> None:
    """Processes of one Python share one set of probes (uprobes are per inode); the
    probes go when the last of them is removed."""
    from contextlib import ExitStack

    python = by_label("sid-3.14")
    with ExitStack() as stack:
        targets = [stack.enter_context(run_target(python, "alternating.py", "5", "0.001"))
                   for _ in range(5)]
        probes_before = capture.probe_count()
        for target in targets:
            capture.add(open_target(target.pid))
        assert capture.probe_count() == probes_before + 4   # Task.__init__: entry, return
        time.sleep(0.5)
        for target in targets:
            assert len(capture.records(target.pid)) == 5
        for target in targets:
            capture.remove(target.pid)
        assert capture.probe_count() == probes_before


def test_prune_deletes_what_no_reader_uses(capture: Capture) -> None:
    """Records taken before the probes were last placed are never read again (a task
    that finished while they were off would keep its record for good): prune() deletes
    them, and the states of threads that exited, but not those of live threads."""
    with run_target(by_label("sid-3.14"), "alternating.py", "20") as target:
        attachment = capture.add(open_target(target.pid))
        try:
            assert attachment.active and attachment.file is not None, attachment.notes
            time.sleep(0.5)

            def threads() -> int:
                return sum(1 for _, v in capture.entries("threads") if v.pid == target.pid)

            assert capture.records(target.pid) and threads() == 1
            capture.prune()
            assert capture.records(target.pid) and threads() == 1   # all in use
            capture.pause(attachment.file)
            capture.prune()
            assert not capture.records(target.pid)     # taken before the next window
            assert threads() == 1                      # the loop's thread lives on
            capture.resume(attachment.file)
            time.sleep(0.5)
            since = capture.attached_since(attachment.file)
            assert since is not None
            fresh = capture.records(target.pid)
            assert fresh and all(r.taken_ns >= since for r in fresh.values())
        finally:
            capture.remove(target.pid)
        assert threads() == 0 and not capture.records(target.pid)
