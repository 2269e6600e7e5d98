#!/usr/bin/env python3
"""Dump time and peak memory: ``aiobpf pstree`` against ``python3.14 -m asyncio pstree``.

Both tools read the same running 3.14 process (tests/targets/many_tasks.py, in the
Debian sid root) with 1k, 10k, 60k and 100k tasks, one after the other, several
times; the table shows medians and the ratios.  3.14's tool gives up on task
lists longer than 65,536 ("Task list appears corrupted"); aiobpf also runs at
one million tasks (``--million``).  Every aiobpf output is checked: it must
list every task of the target.

The daemon's read of the same process, as the daemon makes it at each refresh
(``Collector.snapshot`` with no names and no details, the tasks summarized as they are
read, most of them as columns (``parked``), the summary finished, every cache dropped
and a big read's heap handed back), is timed in a process of its own, after the
command lines (median wall time and CPU time of ``--repeat`` reads); each of its
summaries is checked to count every task of the target.

Run as root: ``make bench`` or ``.venv/bin/python bench/dump_time.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SID_ROOT = Path(os.environ.get("AIOBPF_SID_ROOT", "/var/cache/aiobpf/sid-root"))
PYTHON = "/usr/bin/python3.14"
TARGET = "/home/user/many_tasks.py"


@dataclass
class Run:
    seconds: float
    max_rss_mb: float
    returncode: int
    lines: int
    error: str = ""


def measure(argv: list[str], cwd: Path = REPO) -> Run:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    out_chunks = []
    assert proc.stdout is not None and proc.stderr is not None
    while chunk := proc.stdout.read(1 << 20):
        out_chunks.append(chunk)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = b"".join(out_chunks)
    # python3.14 -m asyncio prints its own errors on stdout.
    said = err or (out if proc.returncode else b"")
    last_err = said.decode(errors="replace").strip().splitlines()
    return Run(seconds, usage.ru_maxrss / 1024, proc.returncode, out.count(b"\n"),
               last_err[-1] if last_err else "")


# The daemon's read as service.py's _refresh makes it (the tasks summarized as they are
# read, the summary finished, the caches dropped and a big read's heap handed back),
# timed; prints "wall cpu" medians and the fewest tasks a summary counted.
DAEMON_READ = """
import os, statistics, sys, time
from aiobpf.collector.snapshot import Collector
from aiobpf.collector.target import open_target
from aiobpf.exporters.prometheus import Summarizer
collector = Collector(open_target(int(sys.argv[1])))
collector.forget()
walls, cpus, counted = [], [], []
for _ in range(int(sys.argv[2])):
    t0, c0 = time.perf_counter(), os.times()
    summarizer = Summarizer(10)
    # (as service.py reads; a tree from before Summarizer.add_parked hands each task)
    kw = {"parked": summarizer.add_parked} if hasattr(summarizer, "add_parked") else {}
    summary = summarizer.finish(collector.snapshot(details=False, sink=summarizer.add,
                                                   names=False, **kw))
    collector.forget(trim=summarizer.pending >= 10_000)
    c1 = os.times()
    walls.append(time.perf_counter() - t0)
    cpus.append(c1.user - c0.user + c1.system - c0.system)
    counted.append(summary.pending)
print(statistics.median(walls), statistics.median(cpus), min(counted))
"""


def daemon_read(pid: int, repeat: int, tasks: int, tree: Path = REPO) -> tuple[float, float]:
    """(wall, CPU) seconds of the daemon's read of ``pid`` by the aiobpf of ``tree``,
    medians of ``repeat``; every read must count ``tasks`` pending tasks."""
    out = subprocess.run([sys.executable, "-c", DAEMON_READ, str(pid), str(repeat)], cwd=tree,
                         capture_output=True, text=True, check=True).stdout.split()
    if int(out[2]) != tasks:
        raise SystemExit(f"the daemon's read of {tree} counted {out[2]} tasks, {tasks} expected")
    return float(out[0]), float(out[1])


def start_target(n: int) -> subprocess.Popen:
    dest = SID_ROOT / TARGET.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE.parent / "tests" / "targets" / "many_tasks.py", dest)
    proc = subprocess.Popen(["chroot", str(SID_ROOT), PYTHON, "-u", TARGET, str(n)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise SystemExit(f"many_tasks.py {n} did not start")
    return proc


def expected_lines(n: int) -> int:
    """pstree lines for many_tasks.py N on 3.14: the main task and its two frames; per
    group task, three frames (group, TaskGroup.__aexit__, _aexit); per leaf task, four
    (leaf, middle, inner, sleep)."""
    groups = (n + 99) // 100
    return 3 + groups * 4 + n * 5


def bench_size(n: int, repeat: int, with_cpython: bool, before: Path | None = None) -> dict:
    target = start_target(n)
    pid = str(target.pid)
    ours: list[Run] = []
    theirs: list[Run] = []
    old: list[Run] = []
    try:
        # Interleaved, so that both tools see the same machine (this VM's speed drifts).
        for _ in range(repeat):
            ours.append(measure([sys.executable, "-m", "aiobpf", "pstree", pid]))
            if before is not None:
                old.append(measure([sys.executable, "-m", "aiobpf", "pstree", pid], before))
            if with_cpython:
                theirs.append(measure(["chroot", str(SID_ROOT), PYTHON, "-m", "asyncio",
                                       "pstree", pid]))
        tasks = n + (n + 99) // 100 + 1   # the leaves, their groups and main
        read_wall, read_cpu = daemon_read(target.pid, repeat, tasks)
        old_read = daemon_read(target.pid, repeat, tasks, before) if before is not None else None
    finally:
        os.killpg(target.pid, 9)
        target.wait()
    for run in ours:
        if run.returncode != 0 or run.lines != expected_lines(n):
            raise SystemExit(f"aiobpf failed at {n} tasks: {run.lines} lines, "
                             f"{expected_lines(n)} expected; {run.error}")
    return {"tasks": n, "aiobpf": [asdict(r) for r in ours], "cpython": [asdict(r) for r in theirs],
            "daemon_read": {"wall": read_wall, "cpu": read_cpu},
            "before": [asdict(r) for r in old],
            "before_daemon_read": ({"wall": old_read[0], "cpu": old_read[1]} if old_read
                                   else None)}


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs) if runs else float("nan")


def report(results: list[dict]) -> str:
    head = (f"{'tasks':>9} | {'aiobpf s':>9} {'3.14 s':>9} {'speed-up':>8} | "
            f"{'aiobpf MB':>9} {'3.14 MB':>9} {'mem ratio':>9} | "
            f"{'aiobpf µs/task':>14} | {'daemon read s':>13} {'(CPU s)':>7} | 3.14 result")
    lines = [head, "-" * len(head)]
    for res in results:
        ours, theirs = res["aiobpf"], res["cpython"]
        t_ours, t_theirs = _median(ours, "seconds"), _median(theirs, "seconds")
        m_ours, m_theirs = _median(ours, "max_rss_mb"), _median(theirs, "max_rss_mb")
        ok = [r for r in theirs if r["returncode"] == 0]
        if not theirs:
            verdict = "not run"
        elif len(ok) == len(theirs):
            verdict = "ok"
        else:
            verdict = f"failed {len(theirs) - len(ok)}/{len(theirs)}: {theirs[-1]['error'][:40]}"
        speed = t_theirs / t_ours if ok else float("nan")
        mem = m_theirs / m_ours if ok else float("nan")
        lines.append(f"{res['tasks']:>9} | {t_ours:>9.2f} {t_theirs:>9.2f} {speed:>7.1f}x | "
                     f"{m_ours:>9.0f} {m_theirs:>9.0f} {mem:>8.1f}x | "
                     f"{t_ours / res['tasks'] * 1e6:>14.1f} | {res['daemon_read']['wall']:>13.2f} "
                     f"{res['daemon_read']['cpu']:>7.2f} | {verdict}")
    return "\n".join(lines)


def report_before(results: list[dict]) -> str:
    """The --before tree against this one: command lines and the daemon's read."""
    head = (f"{'tasks':>9} | {'before s':>9} {'after s':>9} {'speed-up':>8} | "
            f"{'daemon read before s (CPU)':>26} | {'after s (CPU)':>13}")
    lines = [head, "-" * len(head)]
    for res in results:
        t_old, t_new = _median(res["before"], "seconds"), _median(res["aiobpf"], "seconds")
        r_old, r_new = res["before_daemon_read"], res["daemon_read"]
        lines.append(f"{res['tasks']:>9} | {t_old:>9.2f} {t_new:>9.2f} {t_old / t_new:>7.1f}x | "
                     f"{r_old['wall']:>19.2f} ({r_old['cpu']:.2f}) | "
                     f"{r_new['wall']:>6.2f} ({r_new['cpu']:.2f})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,60000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--million", action="store_true", help="also 1,000,000 tasks (aiobpf only)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--before", type=Path, metavar="TREE",
                        help="another aiobpf tree (a checkout of an older commit), run "
                             "interleaved with this one: before and after in one run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark chroots into the sid root and reads memory")
    if not (SID_ROOT / PYTHON.lstrip("/")).exists():
        raise SystemExit(f"{SID_ROOT} has no {PYTHON}: run scripts/provision.sh")
    proc_dir = SID_ROOT / "proc"
    mounted = not os.path.ismount(proc_dir)
    if mounted:
        subprocess.run(["mount", "-t", "proc", "proc", str(proc_dir)], check=True)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        results = [bench_size(n, args.repeat, True, args.before) for n in sizes]
        if args.million:
            results.append(bench_size(1_000_000, 1, False, args.before))
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(proc_dir)], check=False)
    print(f"aiobpf pstree vs python3.14 -m asyncio pstree, same process, median of {args.repeat}")
    print(report(results))
    if args.before is not None:
        print(f"\n{args.before} (before) against this tree, interleaved in the same run")
        print(report_before(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
