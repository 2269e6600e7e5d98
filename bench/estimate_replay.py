#!/usr/bin/env python3
"""The step estimate replayed on recorded loads: many window schedules in seconds.

``bench/bursty.py`` runs the real daemon for minutes and gives one window schedule;
the estimate's error depends on where the windows fall.  This records the same two
targets (tests/targets/bursty.py under sid's python3.14: a bursty and a steady one)
without any probe, every 0.1 s: their threads' CPU time (schedstat), ``/proc``'s
ticks and their own exact step counts (and the machine's busy and stolen ticks, for
a look at what else ran).  The replay then places windows along the
daemon's schedule (``--duty``, ``--window``, and ``--detach``: the time a detach
keeps the probes in place) from many random starts, feeds the readings to
aiobpf.daemon.budget.estimate exactly as the daemon does (a reading every 0.2 s,
``/proc``'s 10 ms ticks between windows, schedstat in them), and compares the
estimate with the truth over every range of at least ``--range`` seconds, as
bench/bursty.py does.  Side by side: the estimate as it is ("rate+cpu"), without
the CPU-bound windows' own ratio ("one ratio") and with CPU time alone ("cpu only",
the windows' rate never used).

The probes' own cost is not in a recording; the replay charges each captured step
``--cost`` seconds of CPU in windows and takes the same out (a model without error).

Run as root: ``.venv/bin/python bench/estimate_replay.py record --minutes 10 -o rec.json``,
then ``.venv/bin/python bench/estimate_replay.py replay rec.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bursty import range_errors, schedule, start_target  # noqa: E402
from memory import stop  # noqa: E402

from aiobpf.bpf.abi import TargetStats  # noqa: E402
from aiobpf.collector.procfs import thread_times  # noqa: E402
from aiobpf.daemon.budget.estimate import (  # noqa: E402
    BOUND_HALF_LIFE_S,
    REGIME_TOLERANCE,
    Reading,
    Regime,
    StepEstimate,
)
from aiobpf.daemon.budget.windows import PAUSE_SPREAD, PAUSE_STEP  # noqa: E402
from aiobpf.daemon.config import Config  # noqa: E402

# (monotonic s, schedstat CPU s, /proc ticks, steps[, machine's busy ticks, stolen ticks])
Row = tuple[float, ...]
READ_EVERY = 0.2     # the daemon's tick
SCRAPE_EVERY = 2.0   # bench/bursty.py's scrapes


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _machine() -> tuple[int, int]:
    """The machine's busy and stolen 10 ms ticks, all CPUs (/proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def record(minutes: float, seed: int, out: Path) -> None:
    bursty, bursty_log = start_target(20, schedule(seed, minutes), 2000)
    steady, steady_log = start_target(2, "steady:60", 2000)
    targets = {"bursty": (bursty, bursty_log), "steady": (steady, steady_log)}
    rows: dict[str, list[tuple[float, float, int, int, int]]] = {name: [] for name in targets}
    try:
        time.sleep(2.0)
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            t = time.monotonic()
            busy, steal = _machine()
            for name, (proc, _) in targets.items():
                ns = sum(thread_times(proc.pid).ns.values())
                rows[name].append((t, ns / 1e9, _ticks(proc.pid), busy, steal))
            time.sleep(max(0.1 - (time.monotonic() - t), 0.0))
        time.sleep(0.5)   # the targets' count of the last reading
        data = {name: [(t, cpu, ticks, log.at(t), busy, steal)
                       for t, cpu, ticks, busy, steal in rows[name] if log.at(t) is not None]
                for name, (_, log) in targets.items()}
    finally:
        stop(bursty)
        stop(steady)
    out.write_text(json.dumps(data))
    print(f"recorded {minutes:g} min of both targets: {out}")


def _at(rows: list[Row], t: float) -> tuple[float, float, float]:
    """(CPU s, ticks, steps) at ``t``, interpolated between the recorded rows."""
    lo, hi = 0, len(rows) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if rows[mid][0] <= t else (lo, mid)
    a, b = rows[lo], rows[hi]
    f = 0.0 if b[0] == a[0] else min(max((t - a[0]) / (b[0] - a[0]), 0.0), 1.0)
    return (a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2]), a[3] + f * (b[3] - a[3]))


def windows(t0: float, t1: float, args: argparse.Namespace, rng: random.Random
            ) -> list[tuple[float, float]]:
    """(open, close) times along the daemon's schedule: a pause after each window of
    (window + detach) * (1/duty - 1), spread by the golden-ratio sequence."""
    out, t, phase = [], t0 + 1.0 + rng.random() * 10, rng.random()
    while t < t1:
        out.append((t, t + args.window))
        phase = (phase + PAUSE_STEP) % 1.0
        spread = 1.0 + PAUSE_SPREAD * (2.0 * phase - 1.0)
        t += args.window + args.detach + (args.window + args.detach) * (1 / args.duty - 1) * spread
    return out


def replay(rows: list[Row], make: Callable[[], StepEstimate], args: argparse.Namespace,
           rng: random.Random) -> list[tuple[float, float, float]]:
    """(time, estimated steps, true steps) every SCRAPE_EVERY seconds of one replay."""
    t0, t1 = rows[0][0], rows[-1][0]
    est, probe_cpu, start_steps = make(), 0.0, rows[0][3]
    plan = [(t, kind) for opened, closed in windows(t0, t1, args, rng)
            for t, kind in ((opened, "open"), (closed, "close"))]
    n = int((t1 - t0) / READ_EVERY)
    plan += [(t0 + READ_EVERY * k, "read") for k in range(n)]
    plan.sort()
    samples, window_start = [], None
    every = round(SCRAPE_EVERY / READ_EVERY)
    reads = 0
    for t, kind in plan:
        cpu, ticks, steps = _at(rows, t)
        seen_cpu = math.floor((ticks / 100 + probe_cpu) * 100) / 100   # /proc: 10 ms ticks
        stats = TargetStats()
        stats.steps = int(steps)
        if kind == "open":
            est.read(Reading(t, seen_cpu, stats), attached=False)
            window_start = (cpu, steps)
        elif kind == "close" and window_start is not None:
            captured = steps - window_start[1]
            probe_cpu += captured * args.cost
            seen_cpu = math.floor((ticks / 100 + probe_cpu) * 100) / 100
            est.read(Reading(t, seen_cpu, stats), attached=True)
            noise = 1.0 + rng.gauss(0.0, args.window_noise)
            est.close_window(t, args.cost,
                             (cpu - window_start[0]) * noise + captured * args.cost)
            window_start = None
        elif kind == "read":
            if window_start is None:
                est.read(Reading(t, seen_cpu, stats), attached=False)
            reads += 1
            if reads % every == 0:
                samples.append((t, est.counts.steps, steps - start_steps))
    return samples


def summary(samples: list[tuple[float, float, float]], span: float) -> tuple[float, float, float]:
    """(share of ranges within 10 %, worst range error, error over the whole run), from
    the first sample after a window saw the process."""
    first = next((i for i, s in enumerate(samples) if s[1] > 0), 0)
    samples = samples[first:]
    errors = range_errors(samples, span)
    if not errors:
        return 0.0, 0.0, 0.0
    (_, e0, r0), (_, e1, r1) = samples[0], samples[-1]
    return (sum(abs(e) <= 0.10 for e in errors) / len(errors), max(errors, key=abs),
            (e1 - e0) / (r1 - r0) - 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record the two targets (as root)")
    rec.add_argument("--minutes", type=float, default=10.0)
    rec.add_argument("--seed", type=int, default=1, help="the bursty target's phases")
    rec.add_argument("-o", "--out", type=Path, required=True)
    rep = sub.add_parser("replay", help="replay a recording through the estimate")
    rep.add_argument("recording", type=Path)
    rep.add_argument("--duty", type=float, default=0.019,
                     help="attached share (bench/bursty.py's daemon planned 1.9%%)")
    rep.add_argument("--window", type=float, default=Config().window,
                     help="the daemon's window (default: its default, %(default)g s)")
    rep.add_argument("--detach", type=float, default=0.08,
                     help="s a detach keeps the probes (bench/probe_detach.py: 0.08 s for a "
                          "3.12+ file's links, 0.48 s as perf events)")
    rep.add_argument("--cost", type=float, default=3e-6, help="probe CPU s per captured step")
    rep.add_argument("--window-noise", type=float, default=0.0,
                     help="spread of a window's CPU time, as a share (the daemon's windows of "
                          "the steady target varied by ~20%% more than the recording's)")
    rep.add_argument("--tolerance", type=float, default=REGIME_TOLERANCE,
                     help="the estimate's REGIME_TOLERANCE")
    rep.add_argument("--bound-half-life", type=float, default=BOUND_HALF_LIFE_S,
                     help="the estimate's BOUND_HALF_LIFE_S")
    rep.add_argument("--runs", type=int, default=20,
                     help="window schedules replayed (all within: the share of them with "
                          "every range within 10%%)")
    rep.add_argument("--range", type=float, default=120.0, help="shortest range compared")
    args = parser.parse_args()
    if args.command == "record":
        record(args.minutes, args.seed, args.out)
        return 0
    data = json.loads(args.recording.read_text())
    estimates: dict[str, Callable[[], StepEstimate]] = {
        "rate+cpu": lambda: StepEstimate(_regime=Regime(tolerance=args.tolerance),
                                         bound_half_life_s=args.bound_half_life),
        "one ratio": lambda: StepEstimate(_regime=Regime(tolerance=args.tolerance),
                                          bound_half_life_s=None),
        "cpu only": lambda: StepEstimate(_regime=Regime(tolerance=None),
                                         bound_half_life_s=args.bound_half_life),
    }
    print(f"{args.runs} window schedules, duty {args.duty:.2%}, windows of {args.window:g} s "
          f"(+{args.detach:g} s detaching); ranges >= {args.range:g} s")
    print(f"{'target':8} {'estimate':9} {'ranges within 10%: median':>26} {'min':>5} "
          f"{'all within':>10} {'worst range: median':>20} {'worst':>6} "
          f"{'whole run (median)':>19}")
    for name in ("bursty", "steady"):
        for label, make in estimates.items():
            runs = [summary(replay(data[name], make, args, random.Random(seed)), args.range)
                    for seed in range(args.runs)]
            within = [r[0] for r in runs]
            print(f"{name:8} {label:9} {statistics.median(within):>26.0%} {min(within):>5.0%} "
                  f"{sum(w == 1.0 for w in within) / len(within):>10.0%} "
                  f"{statistics.median(abs(r[1]) for r in runs):>20.1%} "
                  f"{max(abs(r[1]) for r in runs):>6.1%} "
                  f"{statistics.median(r[2] for r in runs):>+19.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
