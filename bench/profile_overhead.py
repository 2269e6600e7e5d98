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

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "aiobpf", "profile", str(self.pid), "--rate", str(RATE),
                "--duration", "3600", "-o", os.devnull, "--format", "collapsed"]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=4, help="off/on pairs per profiler")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: BPF needs it")
    profilers = [AiobpfProfile, PySpy, PySpyNonblocking]
    results = [*bench_pingpong(args.phase, args.rounds, profilers),
               *bench_http(args.phase, args.rounds, profilers)]
    print(f"profiling overhead, same process, profiler off/on alternating, median of "
          f"{args.rounds} phases of {args.phase:.0f} s ({' '.join(_python())})")
    print_table(results)
    for r in results:
        if r["tracer_cpu"] is not None:
            print(f"{r['name']}: {r['tracer']}: the profiler's own CPU "
                  f"{100 * r['tracer_cpu']:.1f}% of a core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
