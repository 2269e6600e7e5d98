#!/usr/bin/env python3
"""Tracing overhead, side by side in one run: the same target process with and
without aiobpf's BPF capture (full stack capture at every step end).

(a) worst case: an asyncio.Queue ping-pong between two tasks (two steps per round
    trip, nothing else);
(b) a realistic service: an asyncio streams HTTP server under wrk on loopback;
(c) with --spawn, task creation (3.12+): batches of one-step tasks, started eagerly
    or not, under full capture with and without the probes on Task.__init__ (which
    count creations and bracket eager first steps), side by side.

Each target runs once; capture is switched on and off in alternating phases of
--phase seconds (off, on, off, on, ...), and each phase's throughput and the
target's CPU time per operation are measured.  "off" means no aiobpf program is
loaded at all.  With --breakdown, two more tracers say where full capture's cost
goes: the syscall hooks alone, and uprobes at aiobpf's probe sites whose programs do
nothing (the traps alone).  Last, a uprobe hit and the syscall hooks' toll are timed
as the daemon times them (aiobpf/collector/probe_cost.py).

Run as root: ``make bench`` or ``.venv/bin/python bench/overhead.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiobpf.bpf.capture import Capture
from aiobpf.collector import probe_cost, procfs
from aiobpf.collector.probes import TASK_INIT, find_step_sites
from aiobpf.collector.target import open_target

HERE = Path(__file__).resolve().parent
OpsCounter = Callable[[], tuple[int, float]]   # a target's operations and CPU seconds so far


def _python() -> list[str]:
    """The interpreter the targets run under: a pyenv 3.12 if present, else sid's 3.14."""
    for candidate in sorted(Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
                            .glob("versions/3.12.*/bin/python3.12")):
        return [str(candidate)]
    return ["/usr/bin/python3.11"]


def _start_target(argv: list[str]) -> subprocess.Popen:
    """Start a target program and wait for its READY line (or stop it and fail)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdin and proc.stdout
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise SystemExit(f"{' '.join(argv)}: did not start (said {line!r})")
    return proc


class CaptureTracer:
    """Full capture: aiobpf's programs on every step, for the whole phase."""

    label = "full capture"

    def __init__(self, pid: int, counter: OpsCounter) -> None:
        self.pid, self.counter = pid, counter
        self.capture: Capture | None = None

    def start(self) -> None:
        self.capture = Capture()
        self.capture.add(open_target(self.pid))
        time.sleep(0.2)  # let probes settle before measuring

    def steps(self) -> int:
        stats = self.capture.stats(self.pid) if self.capture else None
        return stats.steps if stats else 0

    def stop(self) -> None:
        if self.capture:
            self.capture.close()
            self.capture = None


class StepsOnlyTracer(CaptureTracer):
    """Full capture without the probes on Task.__init__ (as before 3.12 support of
    eager tasks): what those probes add is the difference to full capture."""

    label = "full capture, no Task.__init__ probes"

    def start(self) -> None:
        self.capture = Capture()
        target = open_target(self.pid)
        holder = target.asyncio or target.core
        found = find_step_sites(holder.image, None, target.layout["type.call"])
        assert TASK_INIT not in found[0]   # (only asked for with task_init=True)
        self.capture.add(target, found=found)
        time.sleep(0.2)


class HooksOnlyTracer(CaptureTracer):
    """The syscall hooks alone, no uprobe: their toll on the target's system calls."""

    label = "syscall hooks only"

    def start(self) -> None:
        self.capture = Capture()
        self.capture.set_wait_hooks(True)


class TrapsOnlyTracer(CaptureTracer):
    """Uprobes at aiobpf's probe sites whose program does nothing: the traps alone."""

    label = "uprobe traps only"

    def start(self) -> None:
        self.capture = Capture()
        self.probes = ExitStack()
        target = open_target(self.pid)
        holder = target.asyncio or target.core
        sites, _ = find_step_sites(holder.image, None, target.layout["type.call"])
        mapping = next(m for m in target.maps if m.path == holder.path)
        path = str(procfs.open_mapped(self.pid, mapping))
        for site in sites.values():
            self.probes.enter_context(self.capture.empty_uprobe(path, site.file_offset))

    def stop(self) -> None:
        self.probes.close()
        super().stop()


class Phases:
    """Alternate the tracer off/on around a running target and collect per-phase figures.

    ``sample(seconds)`` returns the phase's throughput (operations/s) and the target's
    CPU time per operation (us): a tracer's cost shows in the second even when the load
    generator, not the target, limits the first.  A tracer with a ``phase_info()``
    method adds what it says of each phase to the tracer's figures ("info")."""

    def __init__(self, pid: int, phase: float, rounds: int, tracers: Sequence[type],
                 counter: OpsCounter) -> None:
        self.pid, self.phase, self.rounds, self.tracers = pid, phase, rounds, tracers
        self.counter = counter

    def run(self, sample) -> tuple[dict[str, list[float]], list[dict[str, list[float]]]]:
        """The untraced phases (pooled) and, per tracer, its traced phases."""
        off: dict[str, list[float]] = {"rate": [], "cpu": []}
        on: list[dict[str, list[float]]] = [
            {"rate": [], "cpu": [], "tracer_cpu": [], "steps": [], "info": []}
            for _ in self.tracers]
        for _ in range(self.rounds):
            for figures, tracer_class in zip(on, self.tracers, strict=True):
                rate, cpu = sample(self.phase)
                off["rate"].append(rate)
                off["cpu"].append(cpu)
                tracer = tracer_class(self.pid, self.counter)
                tracer.start()
                try:
                    before = tracer.steps()
                    own = getattr(tracer, "pid_of_tracer", lambda: None)()
                    own_cpu = procfs.process_cpu_s(own) if own else 0.0
                    t0 = time.perf_counter()
                    rate, cpu = sample(self.phase)
                    if own:
                        figures["tracer_cpu"].append((procfs.process_cpu_s(own) - own_cpu)
                                                     / (time.perf_counter() - t0))
                    figures["rate"].append(rate)
                    figures["cpu"].append(cpu)
                    figures["steps"].append((tracer.steps() - before) / self.phase)
                    if hasattr(tracer, "phase_info"):
                        figures["info"].append(tracer.phase_info())
                finally:
                    tracer.stop()
        return off, on



def _paired(off: list[float], on: list[float], index: int, stride: int
            ) -> tuple[float, float]:
    """Mean and standard error, in percent, of each traced phase's CPU/op against the
    untraced phases around it (the one before and, where there is one, the one after:
    a steady drift of the machine cancels out).  ``off`` holds every untraced phase;
    tracer ``index`` of ``stride`` ran after untraced phase ``index + k * stride``."""
    ratios = []
    for k, value in enumerate(on):
        at = index + k * stride
        around = off[at:at + 2]
        ratios.append(100 * (value / statistics.fmean(around) - 1))
    if len(ratios) < 2:
        return (ratios[0] if ratios else float("nan"), float("nan"))
    return statistics.fmean(ratios), statistics.stdev(ratios) / len(ratios) ** 0.5


def _measure(proc: subprocess.Popen, phases: Phases, sample, name: str, unit: str
             ) -> list[dict]:
    """Run the phases on the target ``proc``, stop it, and summarise per tracer."""
    try:
        off, on = phases.run(sample)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    rate_off, cpu_off = statistics.median(off["rate"]), statistics.median(off["cpu"])
    results = []
    for index, (tracer, figures) in enumerate(zip(phases.tracers, on, strict=True)):
        rate_on, cpu_on = statistics.median(figures["rate"]), statistics.median(figures["cpu"])
        results.append({
            "name": name, "tracer": tracer.label, "unit": unit, "off": rate_off, "on": rate_on,
            "loss_percent": 100 * (rate_off - rate_on) / rate_off,
            "cpu_us_off": cpu_off, "cpu_us_on": cpu_on,
            "cpu_percent": 100 * (cpu_on - cpu_off) / cpu_off,
            "cpu_paired": _paired(off["cpu"], figures["cpu"], index, len(phases.tracers)),
            "tracer_cpu": statistics.median(figures["tracer_cpu"]) if figures["tracer_cpu"]
            else None,
            "steps_per_second": statistics.median(figures["steps"]),
            "off_phases": off["rate"], "off_cpu_phases": off["cpu"], "phases": figures})
    return results


def _counter(proc: subprocess.Popen) -> OpsCounter:
    """Ask a bench target for its operations and CPU seconds so far (one line each way;
    a tracer may ask from its own thread while a phase is measured)."""
    assert proc.stdin and proc.stdout
    lock = threading.Lock()

    def read() -> tuple[int, float]:
        with lock:
            proc.stdin.write("\n")
            proc.stdin.flush()
            count, cpu = proc.stdout.readline().split()
        return int(count), float(cpu)

    return read


def _rate_sampler(read: OpsCounter) -> Callable[[float], tuple[float, float]]:
    """A phase's sample of a target that counts its own operations: (operations per
    second, CPU microseconds per operation) over ``seconds``."""
    def sample(seconds: float) -> tuple[float, float]:
        c0, cpu0 = read()
        t0 = time.perf_counter()
        time.sleep(seconds)
        c1, cpu1 = read()
        return (c1 - c0) / (time.perf_counter() - t0), 1e6 * (cpu1 - cpu0) / (c1 - c0)
    return sample


def bench_pingpong(phase: float, rounds: int, tracers: Sequence[type] = (CaptureTracer,)
                   ) -> list[dict]:
    proc = _start_target([*_python(), "-u", str(HERE / "targets" / "pingpong.py")])
    read = _counter(proc)

    sample = _rate_sampler(read)
    return _measure(proc, Phases(proc.pid, phase, rounds, tracers, read), sample,
                    "queue ping-pong", "round trips/s")


def start_http_server() -> tuple[subprocess.Popen, str, str]:
    """The HTTP server target on a free loopback port: (process, wrk, its URL)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is missing: scripts/provision.sh installs it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _start_target([*_python(), "-u", str(HERE / "targets" / "http_server.py"),
                          str(port)])
    return proc, wrk, f"http://127.0.0.1:{port}/items"


def bench_http(phase: float, rounds: int, tracers: Sequence[type] = (CaptureTracer,)
               ) -> list[dict]:
    proc, wrk, url = start_http_server()
    read = _counter(proc)

    def cpu() -> float:
        return read()[1]

    def sample(seconds: float) -> tuple[float, float]:
        cpu0 = cpu()
        out = subprocess.run([wrk, "-t1", "-c16", f"-d{seconds:.0f}s", url],
                             capture_output=True, text=True, check=True).stdout
        cpu1 = cpu()
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        return rate, 1e6 * (cpu1 - cpu0) / requests

    return _measure(proc, Phases(proc.pid, phase, rounds, tracers, read), sample,
                    "HTTP server (asyncio streams, wrk -c16)", "requests/s")


def bench_spawn(phase: float, rounds: int, eager: bool) -> list[dict]:
    proc = _start_target([*_python(), "-u", str(HERE / "targets" / "spawn.py"),
                          "eager" if eager else "plain"])
    read = _counter(proc)

    sample = _rate_sampler(read)
    return _measure(proc, Phases(proc.pid, phase, rounds, [StepsOnlyTracer, CaptureTracer],
                                 read), sample,
                    f"tasks created {'eagerly' if eager else '(not eager)'}", "tasks/s")


def print_table(results: list[dict]) -> None:
    """Throughput and the target's CPU per operation, off and on, side by side."""
    print(f"{'workload: tracer':<45} {'off':>9} {'on':>9} {'loss':>7}   {'CPU/op off':>10} "
          f"{'on':>8} {'more':>7} {'±':>6} {'steps/s':>9}")
    for r in results:
        print(f"{r['name'] + ': ' + r['tracer']:<45} {r['off']:>9.0f} {r['on']:>9.0f} "
              f"{r['loss_percent']:>6.1f}%   {r['cpu_us_off']:>8.2f}us {r['cpu_us_on']:>6.2f}us "
              f"{r['cpu_percent']:>6.1f}% {r['cpu_paired'][1]:>5.2f}% "
              f"{r['steps_per_second']:>9.0f}  ({r['unit']})")
    print("loss: throughput lost; more: the target's CPU time per operation added (the "
          "cost even where the load generator, not the target, sets the pace; medians), ± "
          "the standard error of each traced phase against the untraced ones around it")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=float, default=3.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--spawn", action="store_true",
                        help="only the task creation workloads (c), eager and not")
    parser.add_argument("--breakdown", action="store_true",
                        help="also measure the syscall hooks alone and the uprobe traps alone")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: BPF capture needs it")
    tracers = [HooksOnlyTracer, TrapsOnlyTracer, CaptureTracer] if args.breakdown \
        else [CaptureTracer]
    if args.spawn:
        results = [*bench_spawn(args.phase, args.rounds, True),
                   *bench_spawn(args.phase, args.rounds, False)]
    else:
        results = [*bench_pingpong(args.phase, args.rounds, tracers),
                   *bench_http(args.phase, args.rounds, tracers)]
    capture = Capture()
    try:
        costs = probe_cost.measure(capture)
    finally:
        capture.close()
    print(f"tracing overhead, same process, tracer off/on alternating, median of "
          f"{args.rounds} phases of {args.phase:.0f} s ({' '.join(_python())})")
    print_table(results)
    print(f"one uprobe hit on a push, empty program: {1e9 * costs.trap_s:.0f} ns; with a "
          f"uretprobe too: {1e9 * costs.created_s:.0f} ns; the syscall hooks' toll: "
          f"{1e9 * costs.syscall_s:.0f} ns per system call")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "trap_s": costs.trap_s,
                                         "syscall_s": costs.syscall_s,
                                         "created_s": costs.created_s}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
