"""Windowed step counts against a target's own exact count (issue: numbers you can trust).

At the default budget the probes are attached in short windows; between them the
daemon estimates from the target's user CPU time (aiobpf.daemon.budget.estimate).  A target
with bursts of load and idle phases counts its own steps; the daemon's counter must
follow it, and must not grow while the target is idle.  ``bench/bursty.py`` measures
the same over longer runs (figures in the README).
"""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

from tests.conftest import TARGETS, run_target
from tests.integration.daemon_proc import run_daemon
from tests.pythons import by_label
from tests.step_count import StepLog

SELECT = r" (/home/user|" + re.escape(str(TARGETS)) + r")/bursty\.py"
ON, OFF = 12.0, 12.0
WORK = 2000   # iterations of arithmetic per step: ~60 us, a small request handler


def test_windowed_counts_follow_bursts_and_stop_while_idle(tmp_path: Path) -> None:
    python = by_label("sid-3.14")
    with (run_target(python, "bursty.py", "20", f"on:{ON},off:{OFF}", str(WORK)) as target,
          run_daemon(tmp_path, budget=0.01, select=SELECT, verbose=2) as daemon):
        log = StepLog()
        assert target.proc.stdout is not None
        log.follow(target.proc.stdout)
        assert log.at(time.monotonic(), wait=5.0) is not None   # the count comes in
        start = log.times[0]     # the schedule starts with the target's first report
        daemon.wait_traced(target.pid, timeout=20)
        samples: list[tuple[float, float, float]] = []   # (time, daemon, true)
        deadline = time.monotonic() + 5 * (ON + OFF)
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = time.monotonic()
            steps = daemon.value("aiobpf_task_steps_total", f'pid="{target.pid}"')
            true = log.at(now)
            if steps is not None and true is not None:
                samples.append((now, steps, true))
        windowed = 'capture="windowed"' in "".join(
            daemon.series("aiobpf_process_info", target.pid))
    assert windowed, daemon.log.read_text()[-2000:]
    # idle: the middle of each off phase (the target's schedule starts at `start`)
    idle_growth, busy_steps = 0.0, 0.0
    for (t0, e0, r0), (t1, e1, r1) in itertools.pairwise(samples):
        phase0, phase1 = (t0 - start) % (ON + OFF), (t1 - start) % (ON + OFF)
        if ON + 2 < phase0 < phase1 < ON + OFF - 1:
            idle_growth += e1 - e0
        busy_steps = max(busy_steps, r1 - r0)
    # (the target's reporter still steps 5 times a second while idle, and the CPU it
    # spends is counted at the busy steps' ratio: a few hundred steps per off phase;
    # the rate of the last window, extrapolated, added hundreds of thousands)
    assert idle_growth <= 0.02 * busy_steps * 5, (idle_growth, busy_steps)
    (_, e_first, r_first), (_, e_last, r_last) = samples[0], samples[-1]
    ratio = (e_last - e_first) / (r_last - r_first)
    print(f"daemon {e_last - e_first:,.0f} steps for {r_last - r_first:,.0f} true "
          f"({ratio - 1:+.1%}); added {idle_growth:,.0f} while idle")
    windows = [ln for ln in daemon.log.read_text().splitlines()
               if "window saw" in ln or "uprobe hit costs" in ln]
    print("\n".join(windows))
    assert 0.75 < ratio < 1.25, "\n".join(windows)
