#!/usr/bin/env python3
"""What one CPU sample of the profiler costs the sampled thread, by stack depth: the
figure the daemon's budget charges continuous profiles with
(aiobpf.daemon.budget.cost.PROFILE_SAMPLE_S).

A target thread spins at a known Python stack depth and reports the CPU time of each
chunk of fixed work.  Phases alternate, side by side in one run: no perf event; the
perf event with the sampling program returning at once (the process has no config:
the interrupt and the program's entry, ``empty``); and the full program walking the
frames (``full``).  The kernel counts the program's runs and run time
(``kernel.bpf_stats_enabled``); the chunk times give the whole cost to the thread,
interrupt included: (CPU per chunk with - without) / samples per chunk.

Run as root: ``.venv/bin/python bench/profile_sample_cost.py [--rate HZ] [--phase S]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from overhead import _python  # noqa: E402

from aiobpf.bpf.profile import CpuProfiler  # noqa: E402
from aiobpf.collector.cpu_samples import SampleNamer, profile_config  # noqa: E402
from aiobpf.collector.snapshot import Collector  # noqa: E402
from aiobpf.collector.target import open_target  # noqa: E402

TARGET = """
import asyncio, sys, time
DEPTH, N = int(sys.argv[1]), int(sys.argv[2])
def nest(d):
    if d > 0:
        return nest(d - 1)
    while True:
        t = time.thread_time()
        for _ in range(N):
            pass
        print(time.thread_time() - t, flush=True)
async def main():
    print("READY", flush=True)
    nest(DEPTH)
asyncio.run(main())
"""


def _program_runs() -> tuple[int, int]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True,
                         text=True, check=True).stdout
    progs = [p for p in json.loads(out) if p.get("name") == "on_cpu_clock"]
    return sum(p.get("run_cnt", 0) for p in progs), sum(p.get("run_time_ns", 0) for p in progs)


def _measure(depth: int, rate: float, phase_s: float, rounds: int, work: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(TARGET)
    proc = subprocess.Popen([*_python(), "-u", script.name, str(depth), str(work)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("READY")
    chunks: list[float] = []
    threading.Thread(target=lambda: [chunks.append(float(line)) for line in proc.stdout],
                     daemon=True).start()
    time.sleep(0.5)
    target = open_target(proc.pid)
    collector = Collector(target)
    profiler = CpuProfiler(lambda raw: None)
    config, threads = profile_config(collector), SampleNamer(collector).threads()
    results: dict[str, list[tuple[float, float]]] = {"off": [], "empty": [], "full": []}
    try:
        for _ in range(rounds):
            for phase in ("off", "empty", "full"):
                if phase == "off":
                    profiler.forget(proc.pid)
                else:
                    profiler.follow(proc.pid, config, threads, rate)
                    if phase == "empty":   # the program finds no config: returns at once
                        profiler.bpf["configs"].clear()
                time.sleep(0.3)            # (a chunk begun before the switch)
                start, runs0 = len(chunks), _program_runs()
                end_at = time.monotonic() + phase_s
                while time.monotonic() < end_at:
                    profiler.poll(50)
                got = chunks[start:]
                runs = [a - b for a, b in zip(_program_runs(), runs0, strict=True)]
                results[phase].append((statistics.median(got), runs[0] / max(len(got), 1),
                                       runs[1] / max(runs[0], 1)))
    finally:
        profiler.close()
        collector.close()
        target.close()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        os.unlink(script.name)
    off = statistics.median(c for c, _, _ in results["off"])
    out = {"depth": depth, "chunk_ms": off * 1e3}
    for phase in ("empty", "full"):
        cpu = statistics.median(c for c, _, _ in results[phase])
        per_chunk = statistics.median(n for _, n, _ in results[phase])
        out[phase] = {"samples_per_chunk": per_chunk,
                      "cost_us": (cpu - off) / per_chunk * 1e6 if per_chunk else 0.0,
                      "program_us": statistics.median(t for _, _, t in results[phase]) / 1e3}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="samples per second of CPU time (high: the cost is visible)")
    parser.add_argument("--phase", type=float, default=3.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--depths", default="5,30,120",
                        help="Python stack depths of the spinning thread (96 are walked)")
    parser.add_argument("--work", type=int, default=2_000_000, help="loop turns per chunk")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: BPF needs it")
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    was = stats.read_text().strip()
    stats.write_text("1")
    try:
        rows = [_measure(int(d), args.rate, args.phase, args.rounds, args.work)
                for d in args.depths.split(",")]
    finally:
        stats.write_text(was)
    print(f"one CPU sample's cost to the sampled thread ({' '.join(_python())}, "
          f"{args.rate:g} Hz, median of {args.rounds} rounds of {args.phase:g} s phases)")
    print(f"{'depth':>6} {'chunk':>9} | {'empty: whole':>13} {'program':>8} | "
          f"{'full: whole':>12} {'program':>8}")
    for r in rows:
        e, f = r["empty"], r["full"]
        print(f"{r['depth']:>6} {r['chunk_ms']:>7.1f}ms | {e['cost_us']:>10.2f} us "
              f"{e['program_us']:>5.2f} us | {f['cost_us']:>9.2f} us {f['program_us']:>5.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
