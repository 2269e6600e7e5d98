"""A user who copies a process of many tasks over and over cannot make the daemon spend
more than ``read_budget`` of a CPU reading them, and other users' processes are still
traced at once.

The attack: ``fork_copies.py`` makes, by fork, a new copy of a process of 20,000
tasks every half second (four alive at a time, two seconds each).  A copy costs the
user nothing; the daemon examines every new process, which reads its memory once
(a few tenths of a second of CPU for 20,000 tasks): unpaced, most of a CPU.  Python
3.13, whose copies keep their tasks (3.14 empties a copy's task lists at fork, and
its copies cost the daemon a few milliseconds each).  The daemon
paces each user's examinations to ``read_budget`` of one CPU after a burst of
``read_budget * 600`` CPU seconds (here 0.002: 1.2 s, then 0.2 % of a CPU).
Measured here over the 40 s: 1.7-2.1 CPU s; with the pacing switched off, 29 CPU s.
"""

from __future__ import annotations

import time
from pathlib import Path

from aiobpf.collector.procfs import process_cpu_s
from aiobpf.daemon.budget.reads import FIRST_READS_BURST_S
from tests.adversarial.conftest import User, assert_healthy, stop_in_time
from tests.conftest import IN_ROOT_DIR, run_target
from tests.integration.daemon_proc import run_daemon
from tests.pythons import by_label

TASKS, COPIES, LIFE_S = 20_000, 4, 2.0
READ_BUDGET = 0.002
WATCH_S = 40.0
BASELINE = 0.04   # the daemon's loop, scans of the copies coming and going, with room



def test_copies_of_a_big_process_are_examined_within_the_read_budget(
        tmp_path: Path, hostile_user: User) -> None:
    select = rf" {IN_ROOT_DIR}/(depth|fork_copies)\.py"   # depth.py: assert_healthy
    with run_daemon(tmp_path, bpf=False, select=select,
                    extra=f"read_budget = {READ_BUDGET}\n") as daemon, \
            run_target(by_label("sid-3.13"), "fork_copies.py", str(TASKS), str(COPIES),
                       str(LIFE_S), user=hostile_user.name):
        started, cpu_before = time.monotonic(), process_cpu_s(daemon.proc.pid)
        while time.monotonic() - started < WATCH_S:
            time.sleep(1.0)
            daemon.assert_fresh()
        spent = process_cpu_s(daemon.proc.pid) - cpu_before
        paced = daemon.value("aiobpf_errors_total", 'kind="examine_paced"') or 0.0
        # Another user's new process is traced at once, the attack going on.
        assert_healthy(daemon)
        stop_in_time(daemon)
    allowed = READ_BUDGET * FIRST_READS_BURST_S + (2 * READ_BUDGET + BASELINE) * WATCH_S
    print(f"{WATCH_S:.0f} s of copies: the daemon spent {spent:.2f} CPU s "
          f"(allowed {allowed:.2f}); {paced:.0f} examinations put off")
    assert paced > 0
    assert spent <= allowed, daemon.log.read_text()[-3000:]
