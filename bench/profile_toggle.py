#!/usr/bin/env python3
"""What ``aiobpf profile --mode cpu`` costs inside the profiled service, to a fraction
of a percent: one profiler runs for the whole bench while its sampling is switched off
and on every --phase seconds (1 by default), hundreds of times, so that the machine's
drift cancels out between neighbouring phases.

bench/profile_overhead.py starts and stops whole profilers (a compile each), so its
phases last 10 s or more and a few of them cannot resolve 1 %.  Here the bench takes
a copy of each of the profiler's perf events (pidfd_getfd) and disables or enables
them (PERF_EVENT_IOC_DISABLE/ENABLE), and stops and resumes the profiler itself
(SIGSTOP/SIGCONT): off, no sample interrupts the target, the program does not run and
the profiler's user side does nothing; on, everything ``aiobpf profile`` does happens.
py-spy --nonblocking (which never stops the target) is switched with SIGSTOP/SIGCONT
alone, for comparison; py-spy record (which stops the target at each sample) cannot be
paused safely and is measured by bench/profile_overhead.py.

The target runs alone on the machine's last CPU and everything else the bench starts
(the profiler, wrk, the bench itself) on the others, so that their work does not
compete with the target's: the ping-pong's loss is the cost inside the target; the
HTTP server's adds what the profiler takes from wrk, on the other CPU.

Each "on" phase is compared with the mean of the "off" phases before and after it;
the table gives the mean of those paired differences and its standard error.

Run as root: ``.venv/bin/python bench/profile_toggle.py [--phase S] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from overhead import (  # noqa: E402
    _counter,
    _python,
    _start_target,
    start_http_server,
)
from profile_overhead import RATE, _program_runs  # noqa: E402

from aiobpf.collector.procfs import process_cpu_s  # noqa: E402

_SYS_PIDFD_GETFD = 438          # x86_64 and every architecture of the unified table
_PERF_EVENT_IOC_ENABLE = 0x2400
_PERF_EVENT_IOC_DISABLE = 0x2401
WARM_UP_S = 10.0     # a new target's rate climbs for ~10 s (measured: 109k -> 130k/s)


class PerfSwitch:
    """The perf events of a running profiler, switched off and on from this process."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.pidfd = os.pidfd_open(proc.pid)
        self.copies: dict[int, int] = {}    # the profiler's fd -> our copy
        self._libc = ctypes.CDLL(None, use_errno=True)

    def refresh(self) -> None:
        """Copy the perf events the profiler opened since (one per thread it follows)."""
        for link in Path(f"/proc/{self.proc.pid}/fd").iterdir():
            try:
                if int(link.name) in self.copies or \
                        os.readlink(link) != "anon_inode:[perf_event]":
                    continue
            except OSError:
                continue
            fd = self._libc.syscall(_SYS_PIDFD_GETFD, self.pidfd, int(link.name), 0)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "pidfd_getfd")
            self.copies[int(link.name)] = fd

    def set(self, on: bool) -> None:
        """On: the profiler runs and its perf events sample; off: no sample, and the
        profiler stopped (its user side's CPU counts in the on phases only)."""
        if on:
            self.proc.send_signal(signal.SIGCONT)
        self.refresh()
        if not self.copies:
            raise SystemExit("the profiler holds no perf event")
        for fd in self.copies.values():
            fcntl.ioctl(fd, _PERF_EVENT_IOC_ENABLE if on else _PERF_EVENT_IOC_DISABLE, 0)
        if not on:
            self.proc.send_signal(signal.SIGSTOP)

    def close(self) -> None:
        for fd in self.copies.values():
            os.close(fd)
        os.close(self.pidfd)
        self.proc.send_signal(signal.SIGCONT)
        _end(self.proc)


class StopSwitch:
    """A sampler that never stops its target (py-spy --nonblocking), paused with
    SIGSTOP and resumed with SIGCONT."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def set(self, on: bool) -> None:
        self.proc.send_signal(signal.SIGCONT if on else signal.SIGSTOP)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        _end(self.proc)


def _end(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _aiobpf(pid: int) -> PerfSwitch:
    proc = subprocess.Popen([sys.executable, "-m", "aiobpf", "profile", str(pid), "--rate",
                             str(RATE), "--duration", "36000", "--no-daemon", "-o", os.devnull],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=HERE.parent)
    switch = PerfSwitch(proc)
    deadline = time.monotonic() + 60   # it compiles first: 1-3 s, longer on a busy CPU
    while not switch.copies:
        if proc.poll() is not None or time.monotonic() > deadline:
            switch.close()
            raise SystemExit("aiobpf profile ended early, or never sampled")
        time.sleep(0.2)
        switch.refresh()
    return switch


def _py_spy(pid: int) -> StopSwitch:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(RATE),
                             "--duration", "36000", "--nonblocking", "--format", "raw",
                             "-o", os.devnull],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise SystemExit("py-spy ended early")
    return StopSwitch(proc)


SWITCHES: dict[str, Callable[[int], PerfSwitch | StopSwitch]] = {
    "aiobpf": _aiobpf, "py-spy-nonblocking": _py_spy}


def _paired(off: list[float], on: list[float]) -> tuple[float, float]:
    """Mean and standard error (percent) of each "on" phase against the mean of the
    "off" phases either side of it (``off`` has one more phase than ``on``)."""
    diffs = [100 * (value / statistics.fmean(off[i:i + 2]) - 1) for i, value in enumerate(on)]
    return statistics.fmean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5


@dataclass(frozen=True)
class Toggled:
    """One profiler's figures over a bench's phases."""

    lost: tuple[float, float]      # throughput lost, % (mean, standard error)
    cpu: tuple[float, float]       # the target's CPU per operation added, % (same)
    off: float                     # median operations/s, off and on
    on: float
    program_share: float | None    # the sampling program's share of a core when on
    own_cpu: float                 # the profiler's own CPU, share of a core

    def row(self, label: str) -> str:
        program = "-" if self.program_share is None else f"{100 * self.program_share:.3f}%"
        return (f"{label:<38} {self.off:>9.0f} {self.on:>9.0f} {self.lost[0]:>6.2f}% "
                f"{self.lost[1]:>5.2f}%   {self.cpu[0]:>+6.2f}% {self.cpu[1]:>5.2f}%   "
                f"{program:>9} {100 * self.own_cpu:>7.1f}%")


def _run(switch: PerfSwitch | StopSwitch, read: Callable[[], tuple[int, float]],
         phase: float, rounds: int) -> Toggled:
    """Alternate off/on phases (off first and last); each phase's operations per second
    and the target's CPU microseconds per operation."""
    rate: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    switch.set(True)
    time.sleep(WARM_UP_S)
    runs0 = _program_runs()
    own0, t_own = process_cpu_s(switch.proc.pid), time.perf_counter()
    on_seconds = 0.0
    for index in range(2 * rounds + 1):
        on = index % 2 == 1
        switch.set(on)
        time.sleep(0.05)            # the switch settles outside the measured phase
        count0, cpu0 = read()
        t0 = time.perf_counter()
        time.sleep(phase)
        count1, cpu1 = read()
        elapsed = time.perf_counter() - t0
        on_seconds += elapsed if on else 0.0
        rate[on].append((count1 - count0) / elapsed)
        cpu[on].append(1e6 * (cpu1 - cpu0) / max(count1 - count0, 1))
    switch.set(True)
    runs, ns = (now - then for now, then in zip(_program_runs(), runs0, strict=True))
    gained, gained_se = _paired(rate[False], rate[True])
    return Toggled(lost=(-gained, gained_se), cpu=_paired(cpu[False], cpu[True]),
                   off=statistics.median(rate[False]), on=statistics.median(rate[True]),
                   program_share=ns / 1e9 / on_seconds if runs else None,
                   own_cpu=(process_cpu_s(switch.proc.pid) - own0)
                   / (time.perf_counter() - t_own))


def _pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` to ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def _workload(name: str) -> tuple[subprocess.Popen, subprocess.Popen | None]:
    """The target (and its load generator) of bench/overhead.py's workload ``name``."""
    if name == "pingpong":
        return _start_target([*_python(), "-u", str(HERE / "targets" / "pingpong.py")]), None
    target, wrk, url = start_http_server()
    load = subprocess.Popen([wrk, "-t1", "-c16", "-d36000s", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return target, load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=float, default=1.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=150, help="on phases per profiler")
    parser.add_argument("--workloads", default="pingpong,http")
    parser.add_argument("--profilers", default=",".join(SWITCHES),
                        help=f"comma-separated (default: {','.join(SWITCHES)})")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: BPF needs it")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("needs 2 CPUs: one for the target, one for the rest")
    alone, others = {cpus[-1]}, set(cpus[:-1])
    os.sched_setaffinity(0, others)     # inherited by the profilers and wrk
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    was = stats.read_text().strip()
    stats.write_text("1")
    print(f"profiling cost inside the target, one profiler switched off/on every "
          f"{args.phase:g} s, {args.rounds} pairs, {RATE} Hz ({' '.join(_python())}; "
          f"the target alone on CPU {cpus[-1]})")
    print(f"{'workload: profiler':<38} {'off':>9} {'on':>9} {'lost':>7} {'±':>6}   "
          f"{'CPU/op':>7} {'±':>6}   {'program':>9} {'own CPU':>8}")
    try:
        for workload in args.workloads.split(","):
            for name in args.profilers.split(","):
                target, load = _workload(workload)
                _pin(target.pid, alone)
                switch = None
                try:
                    switch = SWITCHES[name](target.pid)
                    r = _run(switch, _counter(target), args.phase, args.rounds)
                finally:
                    if switch is not None:
                        switch.close()
                    for proc in (load, target):
                        if proc is not None:
                            os.kill(proc.pid, signal.SIGKILL)
                            proc.wait()
                print(r.row(f"{workload}: {name}"))
    finally:
        stats.write_text(was)
    print("lost: throughput lost, on against the off phases either side, mean of the pairs "
          "and its standard error; CPU/op: the target's CPU time per operation added; "
          "program: the sampling program's run time (kernel.bpf_stats_enabled) as a share "
          "of one core over the on phases; own CPU: the profiler's, as a share of a core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
