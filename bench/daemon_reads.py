#!/usr/bin/env python3
"""The daemon's CPU with one big process: its memory reads against ``read_budget``.

A 3.14 process of ``--tasks`` tasks (tests/targets/many_tasks.py, in the Debian sid
root) is traced by a daemon with its default config but for ``select`` (that process
only), memory reads only (``--no-bpf``: the tasks sleep, so the probes would see
nothing anyway); after a
warm-up that covers its discovery, the daemon's CPU time (``/proc/PID/stat``) is read
over ``--seconds``, and the distinct values of the process's
``aiobpf_snapshot_timestamp_seconds`` count its reads.  ``--before TREE`` runs an
older checkout's daemon in the same way, interleaved round by round.

Run as root: ``.venv/bin/python bench/daemon_reads.py [--tasks 100000] [--before TREE]``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from dump_time import TARGET, start_target  # noqa: E402

from aiobpf.collector.procfs import process_cpu_s  # noqa: E402


@dataclass
class Watch:
    cpu_share: float     # of one CPU, the whole daemon
    reads: int           # reads of the big process seen
    read_s: float        # the last read's duration



def _value(text: str, name: str, pid: int) -> float | None:
    found = re.search(rf'^{name}{{[^}}]*pid="{pid}"[^}}]*}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def watch(tree: Path, pid: int, seconds: float, warmup: float, port: int) -> Watch:
    """One daemon of ``tree`` tracing ``pid``: its CPU share over ``seconds``."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "aiobpf.toml"   # the defaults, but only the big process
        config.write_text(f'[select]\ncmdline = [" {TARGET}"]\n')
        proc = subprocess.Popen([sys.executable, "-m", "aiobpf", "daemon", "--no-bpf",
                                 "--config", str(config), "--listen", f"127.0.0.1:{port}",
                                 "--socket", f"{tmp}/aiobpf.sock"],
                                cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            time.sleep(warmup)
            stamps: set[float] = set()
            read_s = 0.0
            t0, c0 = time.monotonic(), process_cpu_s(proc.pid)
            while time.monotonic() - t0 < seconds:
                with urllib.request.urlopen(url, timeout=10) as reply:
                    text = reply.read().decode()
                stamp = _value(text, "aiobpf_snapshot_timestamp_seconds", pid)
                if stamp is not None:
                    stamps.add(stamp)
                read_s = _value(text, "aiobpf_snapshot_read_seconds", pid) or read_s
                time.sleep(5.0)   # (Prometheus scrapes every 15-60 s; each costs a rendering)
            share = (process_cpu_s(proc.pid) - c0) / (time.monotonic() - t0)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    # (an older daemon exports no timestamp: its reads are not counted)
    return Watch(share, max(len(stamps) - 1, 0), read_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=150.0, help="watched per daemon")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", type=Path, metavar="TREE",
                        help="an older aiobpf checkout, run interleaved with this one")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    trees = {"this tree": REPO} | ({"before": args.before} if args.before else {})
    target = start_target(args.tasks)
    results: dict[str, list[Watch]] = {name: [] for name in trees}
    try:
        for rnd in range(args.rounds):
            for name, tree in trees.items():
                got = watch(tree, target.pid, args.seconds, args.warmup, 9600 + rnd)
                results[name].append(got)
                print(f"round {rnd + 1}, {name}: daemon {100 * got.cpu_share:.2f} % of a CPU, "
                      f"{got.reads} reads of {args.tasks:,} tasks in {args.seconds:.0f} s "
                      f"(last {got.read_s:.2f} s)", flush=True)
    finally:
        os.killpg(target.pid, signal.SIGKILL)
        target.wait()
    print(f"\n{args.tasks:,} tasks, {args.seconds:.0f} s per daemon, median of {args.rounds}:")
    for name, runs in results.items():
        print(f"  {name:>9}: {100 * statistics.median(r.cpu_share for r in runs):.2f} % of a CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
