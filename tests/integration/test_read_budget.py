"""The daemon's memory reads stay within ``read_budget`` of one CPU.

A real daemon (memory reads only) traces a process of 30,000 tasks, whose read costs
a few tenths of a second of CPU, beside one of 100 tasks, with ``refresh_interval``
1 s.  Read every second, the big one would cost the daemon a third of a CPU (before
the budget, a read of 0.3 s was repeated every 3 s: 10 %).  With ``read_budget`` 3 %,
the small one is still read every second, the big one only as often as the budget
allows, and ``aiobpf_snapshot_timestamp_seconds`` shows when each was read.
"""

from __future__ import annotations

import time
from itertools import pairwise
from pathlib import Path

from aiobpf.collector.procfs import process_cpu_s
from tests.conftest import run_target
from tests.integration.daemon_proc import SELECT, run_daemon
from tests.pythons import by_label

BIG, SMALL = 30_000, 100
READ_BUDGET = 0.03
WATCH_S = 30.0
REFRESH_S = 1.0
BASELINE = 0.03   # the daemon's own loop beside its reads (~0.5 % here), with room



def test_costly_reads_are_paced_and_cheap_ones_are_not(tmp_path: Path) -> None:
    python = by_label("sid-3.14")
    with run_target(python, "many_tasks.py", str(BIG)) as big, \
            run_target(python, "many_tasks.py", str(SMALL), name="few_tasks.py") as small, \
            run_daemon(tmp_path, refresh=REFRESH_S, bpf=False,
                       select=SELECT.replace("|seed_app)", "|seed_app|many_tasks|few_tasks)"),
                       extra=f"read_budget = {READ_BUDGET}\n") as daemon:
        for target in (big, small):
            daemon.wait_traced(target.pid, timeout=60)
        reads: dict[int, list[float]] = {big.pid: [], small.pid: []}
        read_s = 0.0
        started, cpu_before = time.monotonic(), process_cpu_s(daemon.proc.pid)
        while time.monotonic() - started < WATCH_S:
            for pid, seen in reads.items():
                stamp = daemon.value("aiobpf_snapshot_timestamp_seconds", f'pid="{pid}"')
                assert stamp is not None
                if not seen or stamp != seen[-1]:
                    seen.append(stamp)
            read_s = max(read_s, daemon.value("aiobpf_snapshot_read_seconds",
                                              f'pid="{big.pid}"') or 0.0)
            time.sleep(0.2)
        share = (process_cpu_s(daemon.proc.pid) - cpu_before) / (time.monotonic() - started)
        log = daemon.log.read_text()[-3000:]

    now = time.time()
    for seen in reads.values():   # the times of real reads, this minute
        assert all(now - 120 < stamp <= now for stamp in seen), seen
    small_gaps = [b - a for a, b in pairwise(reads[small.pid])]
    assert len(small_gaps) >= WATCH_S / (3 * REFRESH_S), (reads, log)
    assert max(small_gaps) < 4 * REFRESH_S, (small_gaps, log)
    # The big one: as often as the budget allows for its read (CPU time, which its
    # wall time read_s bounds from above on a busy machine), not every second.
    big_gaps = [b - a for a, b in pairwise(reads[big.pid])]
    assert read_s > 0.05, read_s   # (so costly that pacing must show)
    assert len(reads[big.pid]) <= WATCH_S / (0.3 * read_s / READ_BUDGET) + 2, (reads, read_s)
    assert all(gap > 0.3 * read_s / READ_BUDGET for gap in big_gaps), (big_gaps, read_s)
    assert share < READ_BUDGET + BASELINE, (share, reads, read_s, log)
