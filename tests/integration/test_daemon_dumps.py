"""``--capture bpf`` dumps through a daemon whose probes are windowed (issue 12, item 3).

A busy target at the default budget has its probes attached a fraction of a percent
of the time.  A dump asking for BPF records then gets a window opened early by the
daemon (its time counted as attached), and is answered from it; when the daemon
cannot (the budget refuses a second early window at once, BPF is off), the CLI says
why in one line on stderr and reads the process itself.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jsonschema
import pytest

from aiobpf.daemon import dumps
from tests.conftest import SCHEMA, aiobpf, run_target
from tests.integration.daemon_proc import DaemonProcess, daemon_uprobes, run_daemon
from tests.pythons import by_label

SCRIPT = "dump_window_busy.py"          # alternating.py under a name of this test's own
SELECT = r"/dump_window_busy\.py"
SAID = "aiobpf: the daemon did not answer ("


def _wait(what: str, check, daemon: DaemonProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout} s; the daemon's log ends:\n"
                        f"{daemon.log.read_text()[-3000:]}")
        time.sleep(0.1)


def _attached_s(daemon: DaemonProcess, pid: int) -> float:
    return daemon.value("aiobpf_probes_attached_seconds_total", f'pid="{pid}"') or 0.0


def _windowed(daemon: DaemonProcess, pid: int) -> bool:
    return re.search(rf"pid [0-9, ]*\b{pid}\b[0-9, ]*: probes attached [0-9.]+% of the time, "
                     "in windows", daemon.log.read_text()) is not None


def test_bpf_dump_of_a_windowed_process_opens_a_window(tmp_path: Path) -> None:
    python = by_label("sid-3.14")
    with (run_target(python, "alternating.py", "50", "0", name=SCRIPT) as busy,
          run_daemon(tmp_path, budget=0.01, select=SELECT) as daemon):
        pid = busy.pid
        daemon.wait_traced(pid)
        _wait("a windowed plan, and the probes off", lambda: _windowed(daemon, pid)
              and not daemon_uprobes(daemon.proc.pid), daemon, timeout=30)
        before = _attached_s(daemon, pid)
        # the daemon's own answer: a window opened for it, records from it
        t0 = time.perf_counter()
        reply = dumps.request(daemon.socket, {"pid": pid, "format": "json",
                                              "capture": "bpf", "window": 0.3})
        took = time.perf_counter() - t0
        assert reply is not None and "output" in reply, reply   # not handed back
        assert "error" not in reply, reply
        doc = json.loads(reply["output"])
        jsonschema.validate(doc, SCHEMA)
        assert doc["capture"] == "bpf+memory"
        from_bpf = sum(t["source"] == "bpf" for t in doc["tasks"])
        assert from_bpf >= 25, doc["tasks"]   # the busy workers stepped in the window
        # the schedule closes it, and its time is attached time
        _wait("the window closed", lambda: not daemon_uprobes(daemon.proc.pid), daemon, 10)
        _wait("the window's time counted", lambda: _attached_s(daemon, pid) >= before + 0.3,
              daemon, 5)
        # at once again: the budget refuses a second early window; the CLI says why
        t0 = time.perf_counter()
        again = aiobpf("ps", str(pid), "--format", "json", "--capture", "bpf",
                       socket=str(daemon.socket))
        fallback_took = time.perf_counter() - t0
        assert again.returncode == 0, again.stderr
        said = [line for line in again.stderr.splitlines() if line.startswith(SAID)]
        assert len(said) == 1 and "overhead budget refuses an early window" in said[0], \
            again.stderr
        assert again.json()["capture"] == "bpf+memory"   # read with the CLI's own probes
        print(f"--capture bpf of a windowed process: through the daemon {took:.2f} s "
              f"({from_bpf} of {len(doc['tasks'])} tasks from BPF records); refused and "
              f"read by the CLI {fallback_took:.2f} s; attached "
              f"{_attached_s(daemon, pid) - before:.2f} s for the dump")


def test_bpf_dump_through_a_memory_only_daemon_says_why(tmp_path: Path) -> None:
    python = by_label("sid-3.14")
    with (run_target(python, "depth.py", "5", "2", name="dump_window_depth.py") as target,
          run_daemon(tmp_path, bpf=False, select=r"/dump_window_depth\.py") as daemon):
        daemon.wait_traced(target.pid)
        result = aiobpf("pstree", str(target.pid), "--capture", "bpf",
                        socket=str(daemon.socket))
        assert result.returncode == 0, result.stderr
        said = [line for line in result.stderr.splitlines() if line.startswith(SAID)]
        assert said == [f"{SAID}BPF capture is off in the daemon (bpf = false)): reading "
                        "the process here"], result.stderr
        # memory reads need no window: the daemon answers them
        memory = aiobpf("pstree", str(target.pid), "--capture", "memory",
                        socket=str(daemon.socket))
        assert memory.returncode == 0 and SAID not in memory.stderr, memory.stderr


def test_layout_options_read_here_and_say_so(tmp_path: Path) -> None:
    """--no-dwarf and --debug-dir ask for a reading with a layout of one's own: never
    through the daemon (it reads with the layout it found), said in one line when a
    daemon runs, silently when none does."""
    python = by_label("sid-3.14")
    with (run_target(python, "depth.py", "5", "2", name="dump_layout_options.py") as target,
          run_daemon(tmp_path, bpf=False, select=r"/dump_layout_options\.py") as daemon):
        daemon.wait_traced(target.pid)
        pid = str(target.pid)
        for options, said in ((["--no-dwarf"], "--no-dwarf"),
                              (["--debug-dir", str(tmp_path)], "--debug-dir"),
                              (["--no-dwarf", "--debug-dir", str(tmp_path)],
                               "--no-dwarf and --debug-dir")):
            result = aiobpf("ps", pid, *options, socket=str(daemon.socket))
            assert result.returncode == 0, result.stderr
            assert result.stderr.splitlines() == [
                f"aiobpf: {said} reads the process here, not through the daemon"], result.stderr
        alone = aiobpf("ps", pid, "--no-dwarf")   # no daemon at the default test socket
        assert alone.returncode == 0 and alone.stderr == "", alone.stderr
        assert alone.stdout == result.stdout
