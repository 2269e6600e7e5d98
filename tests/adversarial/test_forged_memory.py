"""A target's memory is untrusted: structures forged to never end cost the daemon
bounded time and memory, and never stop it from serving the other processes."""

from __future__ import annotations

import time
from pathlib import Path

from aiobpf.collector.target import open_target
from tests.adversarial.conftest import assert_healthy, stop_in_time
from tests.conftest import TARGETS, run_target
from tests.integration.daemon_proc import run_daemon
from tests.pythons import by_label

FORGED = Path(__file__).parent / "targets" / "forged_task_list.py"
NODES = 8_000_000        # more than the daemon reads (2^20) and than the CLI reads (2^22)
MAX_RSS_MB = 400         # the daemon's peak while reading 2^20 forged tasks (measured: 266)


def test_a_forged_task_list_costs_the_daemon_bounded_time_and_memory(
        tmp_path: Path, hostile_user) -> None:
    python = by_label("sid-3.14")
    select = rf"/home/user/({FORGED.stem}|depth)\.py|{TARGETS}/depth\.py"
    with (run_target(python, FORGED, str(NODES), user=hostile_user.name,
                     stdin=True) as hostile,
          run_daemon(tmp_path, select=select) as daemon):
        daemon.wait_traced(hostile.pid)
        layout = open_target(hostile.pid).layout
        offset = layout["tstate.asyncio_tasks_head"] + layout["llist.next"]
        assert hostile.proc.stdin is not None and hostile.proc.stdout is not None
        hostile.proc.stdin.write(f"{offset}\n")
        hostile.proc.stdin.flush()
        assert hostile.proc.stdout.readline().strip() == "FORGED"
        peak = 0.0
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            peak = max(peak, daemon.rss_mb())
            if "tasks: the rest were left out" in daemon.log.read_text():
                break
            time.sleep(0.2)
        log = daemon.log.read_text()
        assert ("tasks: the rest were left out" in log or "took longer than allowed" in log
                ), log[-3000:]
        assert (daemon.value("aiobpf_errors_total", 'kind="tasks_left_out"') or 0) + (
            daemon.value("aiobpf_errors_total", 'kind="read_limit"') or 0) >= 1
        assert peak < MAX_RSS_MB, f"daemon RSS {peak:.0f} MB while reading forged tasks: {log}"
        assert_healthy(daemon)
        stop_in_time(daemon)
        print(f"daemon peak RSS {peak:.0f} MB")
