#!/usr/bin/env python3
"""Windowed step counts against the truth, under bursty and steady load.

Starts ``aiobpf daemon`` at the default budget (1% of the target's CPU time: the
probes are attached in windows) tracing two targets of tests/targets/bursty.py under
python3.14 (the Debian sid root), which count their own task steps exactly:

- bursty: load on and off in phases of 5-30 s (drawn once from ``--seed``), each
  worker stepping as fast as it can while on, asleep while off;
- steady: a modest constant pace.

Every ``--every`` seconds it scrapes ``aiobpf_task_steps_total`` of each target
and reads the target's own count at the same instant.  It reports, for every range
between two scrapes at least ``--range`` seconds apart, the daemon's steps over
the true steps (the goal: within 10% for ranges of 2 minutes or more), and the
steps the daemon added while the bursty target was idle (the goal: none).

Run as root: ``.venv/bin/python bench/bursty.py [--minutes 8] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from memory import stop  # noqa: E402

from tests.integration.prom import free_port  # noqa: E402
from tests.step_count import StepLog  # noqa: E402

SID_ROOT = Path(os.environ.get("AIOBPF_SID_ROOT", "/var/cache/aiobpf/sid-root"))
PYTHON = "/usr/bin/python3.14"
TARGET = "/home/user/bursty.py"
GOAL = 0.10


def range_errors(samples: list[tuple[float, float, float]], min_span: float
                 ) -> list[float]:
    """For every pair of (time, estimated, true) samples at least ``min_span`` apart:
    estimated steps over true steps, minus 1."""
    errors = []
    for i, (t0, e0, r0) in enumerate(samples):
        for t1, e1, r1 in samples[i + 1:]:
            if t1 - t0 >= min_span and r1 > r0:
                errors.append((e1 - e0) / (r1 - r0) - 1.0)
    return errors


def idle_growth(samples: list[tuple[float, float, float]]) -> tuple[float, float]:
    """(estimated, true) steps added over the scrape intervals in which the target's own
    count barely moved (idle: fewer than 1% of its busiest interval's steps)."""
    deltas = [(e1 - e0, r1 - r0) for (_, e0, r0), (_, e1, r1) in itertools.pairwise(samples)]
    busiest = max((r for _, r in deltas), default=0.0)
    idle = [(e, r) for e, r in deltas if r <= 0.01 * busiest]
    return sum(e for e, _ in idle), sum(r for _, r in idle)


def schedule(seed: int, minutes: float) -> str:
    """On and off phases of 5-30 s, about ``minutes`` long in all."""
    rng = random.Random(seed)
    phases, total, on = [], 0.0, True
    while total < minutes * 60:
        seconds = rng.uniform(5, 30)
        phases.append(f"{'on' if on else 'off'}:{seconds:.1f}")
        total += seconds
        on = not on
    return ",".join(phases)


def scrape_steps(port: int, pids: list[int]) -> dict[int, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("aiobpf_task_steps_total{"):
            for pid in pids:
                if f'pid="{pid}"' in line:
                    out[pid] = float(line.rsplit(" ", 1)[1])
    return out


def start_daemon(workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = workdir / "aiobpf.toml"
    config.write_text("[daemon]\n"   # every setting the default but where it listens
                      f'listen = "127.0.0.1:{port}"\n'
                      f'socket = "{workdir / "aiobpf.sock"}"\n'
                      "[select]\n"
                      f"cmdline = [{json.dumps(re.escape(TARGET))}]\n")
    log = (workdir / "daemon.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "aiobpf", "daemon", "--config", str(config),
                             os.environ.get("AIOBPF_BENCH_VERBOSE", "-v")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            scrape_steps(port, [])
            return proc, port
        except OSError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start: {workdir / 'daemon.log'}") from exc
            time.sleep(0.2)


def start_target(workers: int, phases: str, work: int) -> tuple[subprocess.Popen, StepLog]:
    dest = SID_ROOT / TARGET.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "tests" / "targets" / "bursty.py", dest)
    proc = subprocess.Popen(["chroot", str(SID_ROOT), PYTHON, "-u", TARGET, str(workers),
                             phases, str(work)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("READY"):
        stop(proc)
        raise SystemExit("bursty.py did not start")
    log = StepLog()
    log.follow(proc.stdout)
    return proc, log


def report(name: str, samples: list[tuple[float, float, float]], min_span: float,
           with_idle: bool) -> list[str]:
    if len(samples) < 2:
        return [f"{name}: not traced (no samples)"]
    errors = range_errors(samples, min_span)
    (t0, e0, r0), (t1, e1, r1) = samples[0], samples[-1]
    worst = max(errors, key=abs) if errors else float("nan")
    within = sum(abs(e) <= GOAL for e in errors)
    lines = [f"{name}: {t1 - t0:.0f} s, true steps {r1 - r0:,.0f}, daemon {e1 - e0:,.0f} "
             f"({(e1 - e0) / (r1 - r0) - 1:+.1%} overall)",
             f"  ranges >= {min_span:.0f} s: {len(errors)}, within +-{GOAL:.0%}: "
             f"{within} ({within / len(errors):.0%}), worst {worst:+.1%}"
             if errors else f"  no range of {min_span:.0f} s"]
    if with_idle:
        est, true = idle_growth(samples)
        lines.append(f"  while idle: daemon added {est:,.0f} steps (true: {true:,.0f})")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between scrapes")
    parser.add_argument("--range", type=float, default=120.0, help="shortest range compared")
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--work", type=int, default=2000,
                        help="arithmetic per step: 2000 is ~60 us (a small handler), 300 ~8 us")
    args = parser.parse_args()
    phases = schedule(args.seed, args.minutes)
    print(f"bursty schedule: {phases}")
    with tempfile.TemporaryDirectory() as tmp:
        daemon, port = start_daemon(Path(tmp))
        if os.environ.get("AIOBPF_BENCH_LOG"):   # the daemon's log, kept after the run
            print(f"daemon log: {tmp}/daemon.log (copied to {os.environ['AIOBPF_BENCH_LOG']})")
        procs: list[subprocess.Popen] = []
        try:
            bursty, bursty_log = start_target(args.workers, phases, args.work)
            procs.append(bursty)
            steady, steady_log = start_target(2, "steady:60", args.work)
            procs.append(steady)
            logs = {bursty.pid: bursty_log, steady.pid: steady_log}
            samples: dict[int, list[tuple[float, float, float]]] = {p: [] for p in logs}
            end = time.monotonic() + args.minutes * 60
            while time.monotonic() < end:
                time.sleep(args.every)
                t = time.monotonic()
                counts = scrape_steps(port, list(logs))
                for pid, log in logs.items():
                    true = log.at(t)
                    if pid in counts and true is not None:
                        samples[pid].append((t, counts[pid], true))
            # from the first sample on: before it, the daemon was still measuring
            out = ["", f"aiobpf daemon, default budget; scrapes every {args.every:g} s"]
            out += report("bursty", samples[bursty.pid], args.range, with_idle=True)
            out += report("steady", samples[steady.pid], args.range, with_idle=False)
            print("\n".join(out))
        finally:
            for proc in procs:
                stop(proc)
            stop(daemon)
            if os.environ.get("AIOBPF_BENCH_LOG"):
                shutil.copy(Path(tmp) / "daemon.log", os.environ["AIOBPF_BENCH_LOG"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
