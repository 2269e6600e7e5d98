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
MAX_RSS_MB = 300         # the daemon's peak while reading 2^20 forged tasks (measured: 171-178)


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
        peak, counted = 0.0, 0.0
        deadline = time.monotonic() + 90   # two reads of 30 s at most, on a loaded machine
        while time.monotonic() < deadline and not counted:
            peak = max(peak, daemon.rss_mb())
            counted = sum(daemon.value("aiobpf_errors_total", f'kind="{kind}"') or 0
                          for kind in ("tasks_left_out", "read_limit"))
            time.sleep(0.2)
        log = daemon.log.read_text()
        assert counted >= 1, log[-3000:]
        assert ("tasks: the rest were left out" in log or "took longer than allowed" in log
                ), log[-3000:]
        assert peak < MAX_RSS_MB, f"daemon RSS {peak:.0f} MB while reading forged tasks: {log}"
        assert_healthy(daemon)
        stop_in_time(daemon)
        print(f"daemon peak RSS {peak:.0f} MB")
