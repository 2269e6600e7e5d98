#!/usr/bin/env python3
"""What profiling costs the profiled service, side by side in one run: the same target
with no profiler, with ``aiobpf profile`` (cpu mode), and with py-spy (``record``, as
users run it: the target stopped for each sample; and ``--nonblocking``), all at the
same rate (99 Hz by default).

The targets and phases are bench/overhead.py's: an asyncio.Queue ping-pong (the worst
case: two steps per round trip) and an asyncio streams HTTP server under wrk; each
profiler runs for whole phases, alternating with phases of none, and the table gives
the median throughput lost and the target's CPU per operation added, as there.  The
profilers' own CPU is shown too (aiobpf: its user side; the BPF program's time is the
target's, inside its samples).

Run as root: ``.venv/bin/python bench/profile_overhead.py [--phase S] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from overhead import OpsCounter, _python, bench_http, bench_pingpong, print_table  # noqa: E402

RATE = 99
STARTED_S = 4.0   # aiobpf compiles its program (1-3 s) before it samples


class _ProfilerProcess:
    """A profiler as a child process for the length of a phase (SIGINT ends it)."""

    label = ""
    settle_s = 1.0

    def __init__(self, pid: int, counter: OpsCounter) -> None:
        self.pid = pid
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        time.sleep(self.settle_s)
        if self.proc.poll() is not None:
            raise SystemExit(f"{self.label}: ended early: {self.proc.stderr.read()}")

    def steps(self) -> int:
        return 0

    def pid_of_tracer(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class AiobpfProfile(_ProfilerProcess):
    label = f"aiobpf profile (cpu, {RATE} Hz)"
    settle_s = STARTED_S

    def start(self) -> None:
        super().start()
        self.runs0 = _program_runs()

    def phase_info(self) -> tuple[int, int]:
        """(runs, ns) of the sampling program in the phase, as the kernel counted them
        (kernel.bpf_stats_enabled): its cost inside the target's threads."""
        runs, ns = _program_runs()
        return runs - self.runs0[0], ns - self.runs0[1]

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "aiobpf", "profile", str(self.pid), "--rate", str(RATE),
                "--duration", "3600", "-o", os.devnull, "--format", "collapsed"]


def _program_runs() -> tuple[int, int]:
    """Runs and run time (ns) of every loaded ``on_cpu_clock`` program."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True,
                         text=True, check=True).stdout
    progs = [p for p in json.loads(out) if p.get("name") == "on_cpu_clock"]
    return sum(p.get("run_cnt", 0) for p in progs), sum(p.get("run_time_ns", 0) for p in progs)


class PySpy(_ProfilerProcess):
    label = f"py-spy record ({RATE} Hz)"
    extra: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        return [spy, "record", "--pid", str(self.pid), "--rate", str(RATE), "--duration",
                "3600", "--format", "raw", "-o", os.devnull, *self.extra]


class PySpyNonblocking(PySpy):
    label = f"py-spy record --nonblocking ({RATE} Hz)"
    extra = ("--nonblocking",)


PROFILERS: dict[str, type[_ProfilerProcess]] = {
    "aiobpf": AiobpfProfile, "py-spy": PySpy, "py-spy-nonblocking": PySpyNonblocking}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=4, help="off/on pairs per profiler")
    parser.add_argument("--profilers", default=",".join(PROFILERS),
                        help=f"which, comma-separated (default all: {','.join(PROFILERS)})")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: BPF needs it")
    profilers = [PROFILERS[name] for name in args.profilers.split(",")]
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    was = stats.read_text().strip()
    stats.write_text("1")   # the programs' run time, counted by the kernel
    try:
        results = [*bench_pingpong(args.phase, args.rounds, profilers),
                   *bench_http(args.phase, args.rounds, profilers)]
    finally:
        stats.write_text(was)
    print(f"profiling overhead, same process, profiler off/on alternating, median of "
          f"{args.rounds} phases of {args.phase:.0f} s ({' '.join(_python())})")
    print_table(results)
    for r in results:
        runs = [info for info in r["phases"]["info"] if info and info[0]]
        if runs:
            count, ns = sum(n for n, _ in runs), sum(t for _, t in runs)
            cpu_s = r["cpu_us_on"] * r["on"] * args.phase * len(runs) / 1e6
            print(f"{r['name']}: {r['tracer']}: the sampling program ran {count} times, "
                  f"{ns / count / 1000:.2f} us each: {100 * ns / 1e9 / cpu_s:.3f}% of the "
                  f"target's CPU time (kernel.bpf_stats_enabled)")
        if r["tracer_cpu"] is not None:
            print(f"{r['name']}: {r['tracer']}: the profiler's own CPU "
                  f"{100 * r['tracer_cpu']:.1f}% of a core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
