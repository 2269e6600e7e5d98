#!/usr/bin/env python3
"""Tracing overhead, side by side in one run: the same target process with and
without aiobpf's BPF capture (full stack capture at every step end).

(a) worst case: an asyncio.Queue ping-pong between two tasks (two steps per round
    trip, nothing else);
(b) a realistic service: an asyncio streams HTTP server under wrk on loopback.

Each target runs once; capture is switched on and off in alternating phases of
--phase seconds (off, on, off, on, ...), and each phase's throughput and the
target's CPU time per operation are measured.  "off" means no aiobpf program is
loaded at all.  Also measured: the cost of one uprobe hit with an empty program
(the kernel's trap and return), at the probe sites aiobpf uses.

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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiobpf.collector.loader import Capture
from aiobpf.collector.target import open_target

HERE = Path(__file__).resolve().parent


def _python() -> list[str]:
    """The interpreter the targets run under: a pyenv 3.12 if present, else sid's 3.14."""
    for candidate in sorted(Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
                            .glob("versions/3.12.*/bin/python3.12")):
        return [str(candidate)]
    return ["/usr/bin/python3.11"]


class CaptureTracer:
    """Full capture: aiobpf's programs on every step, for the whole phase."""

    label = "full capture"

    def __init__(self, pid: int) -> None:
        self.pid = pid
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


class Phases:
    """Alternate the tracer off/on around a running target and collect per-phase figures.

    ``sample(seconds)`` returns the phase's throughput (operations/s) and the target's
    CPU time per operation (us): a tracer's cost shows in the second even when the load
    generator, not the target, limits the first."""

    def __init__(self, pid: int, phase: float, rounds: int, tracer=CaptureTracer) -> None:
        self.pid, self.phase, self.rounds, self.tracer = pid, phase, rounds, tracer

    def run(self, sample) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"off": [], "on": [], "off_cpu": [], "on_cpu": [],
                                       "tracer_cpu": []}
        steps = 0
        for _ in range(self.rounds):
            rate, cpu = sample(self.phase)
            out["off"].append(rate)
            out["off_cpu"].append(cpu)
            tracer = self.tracer(self.pid)
            tracer.start()
            before = tracer.steps()
            own = _cpu_seconds(tracer.pid_of_tracer()) if hasattr(tracer, "pid_of_tracer") \
                else None
            t0 = time.perf_counter()
            rate, cpu = sample(self.phase)
            if own is not None:
                out["tracer_cpu"].append((_cpu_seconds(tracer.pid_of_tracer()) - own)
                                         / (time.perf_counter() - t0))
            out["on"].append(rate)
            out["on_cpu"].append(cpu)
            steps += tracer.steps() - before
            tracer.stop()
        out["steps_per_second_on"] = [steps / (self.rounds * self.phase)]
        return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ratio(figures: dict[str, list[float]]) -> tuple[float, float, float]:
    off, on = statistics.median(figures["off"]), statistics.median(figures["on"])
    return off, on, 100 * (off - on) / off


def _measure(proc: subprocess.Popen, phases: Phases, sample, name: str, unit: str) -> dict:
    """Run the phases on the target ``proc``, stop it, and summarise."""
    try:
        figures = phases.run(sample)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    off, on, loss = _ratio(figures)
    cpu_off, cpu_on = statistics.median(figures["off_cpu"]), statistics.median(figures["on_cpu"])
    tracer_cpu = statistics.median(figures["tracer_cpu"]) if figures["tracer_cpu"] else None
    return {"name": name, "unit": unit, "off": off, "on": on, "loss_percent": loss,
            "cpu_us_off": cpu_off, "cpu_us_on": cpu_on,
            "cpu_percent": 100 * (cpu_on - cpu_off) / cpu_off, "tracer_cpu": tracer_cpu,
            "steps_per_second": figures["steps_per_second_on"][0], "phases": figures}


def bench_pingpong(phase: float, rounds: int, tracer=CaptureTracer) -> dict:
    proc = subprocess.Popen([*_python(), "-u", str(HERE / "targets" / "pingpong.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdin and proc.stdout
    assert proc.stdout.readline().startswith("READY")

    def read() -> tuple[int, float]:
        proc.stdin.write("\n")
        proc.stdin.flush()
        count, cpu = proc.stdout.readline().split()
        return int(count), float(cpu)

    def sample(seconds: float) -> tuple[float, float]:
        c0, cpu0 = read()
        t0 = time.perf_counter()
        time.sleep(seconds)
        c1, cpu1 = read()
        return (c1 - c0) / (time.perf_counter() - t0), 1e6 * (cpu1 - cpu0) / (c1 - c0)

    return _measure(proc, Phases(proc.pid, phase, rounds, tracer), sample,
                    "queue ping-pong", "round trips/s")


def bench_http(phase: float, rounds: int, tracer=CaptureTracer) -> dict:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is missing: scripts/provision.sh installs it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*_python(), "-u", str(HERE / "targets" / "http_server.py"),
                             str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdin and proc.stdout
    assert proc.stdout.readline().startswith("READY")

    def cpu() -> float:
        proc.stdin.write("\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())

    def sample(seconds: float) -> tuple[float, float]:
        cpu0 = cpu()
        out = subprocess.run([wrk, "-t1", "-c16", f"-d{seconds:.0f}s",
                              f"http://127.0.0.1:{port}/items"],
                             capture_output=True, text=True, check=True).stdout
        cpu1 = cpu()
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        return rate, 1e6 * (cpu1 - cpu0) / requests

    return _measure(proc, Phases(proc.pid, phase, rounds, tracer), sample,
                    "HTTP server (asyncio streams, wrk -c16)", "requests/s")


def probe_hit_cost(seconds: float = 2.0) -> dict:
    """ns per uprobe hit with an empty program, measured by the kernel (bpf_stats) and
    by the ping-pong's loss of throughput per hit."""
    from bcc import BPF, lib

    proc = subprocess.Popen([*_python(), "-u", str(HERE / "targets" / "pingpong.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdin and proc.stdout
    assert proc.stdout.readline().startswith("READY")

    def rate(s: float) -> float:
        proc.stdin.write("\n")
        proc.stdin.flush()
        c0 = int(proc.stdout.readline().split()[0])
        time.sleep(s)
        proc.stdin.write("\n")
        proc.stdin.flush()
        return (int(proc.stdout.readline().split()[0]) - c0) / s

    try:
        target = open_target(proc.pid)
        holder = target.asyncio or target.core
        from aiobpf.collector.probes import find_step_sites

        sites, _ = find_step_sites(holder.image, None, target.layout["type.call"])
        site = sites["task_wakeup"]
        empty = BPF(text="int hit(void *ctx) { return 0; }")
        fn = empty.load_func(b"hit", BPF.KPROBE)
        path = f"/proc/{proc.pid}/root{holder.path}"
        bare = [rate(seconds)]
        fd = lib.bpf_attach_uprobe(fn.fd, 0, b"aiobpf_bench_empty", path.encode(),
                                   site.file_offset, -1)
        probed = [rate(seconds)]
        lib.bpf_close_perf_event_fd(fd)
        bare.append(rate(seconds))
        # two task_wakeup hits per round trip
        per_rt_off = 1e9 / statistics.mean(bare)
        per_rt_on = 1e9 / probed[0]
        return {"site": f"task_wakeup (+{site.address - site.entry}: {site.instruction})",
                "ns_per_hit": (per_rt_on - per_rt_off) / 2}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def print_table(results: list[dict]) -> None:
    """Throughput and the target's CPU per operation, off and on, side by side."""
    print(f"{'workload':<42} {'off':>9} {'on':>9} {'loss':>7}   {'CPU/op off':>10} "
          f"{'on':>8} {'more':>7} {'steps/s':>9}")
    for r in results:
        print(f"{r['name']:<42} {r['off']:>9.0f} {r['on']:>9.0f} {r['loss_percent']:>6.1f}%   "
              f"{r['cpu_us_off']:>8.2f}us {r['cpu_us_on']:>6.2f}us {r['cpu_percent']:>6.1f}% "
              f"{r['steps_per_second']:>9.0f}  ({r['unit']})")
    print("loss: throughput lost; more: the target's CPU time per operation added (the "
          "cost even where the load generator, not the target, sets the pace)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=float, default=3.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: BPF capture needs it")
    results = [bench_pingpong(args.phase, args.rounds), bench_http(args.phase, args.rounds)]
    hit = probe_hit_cost()
    print(f"tracing overhead, same process, capture off/on alternating, median of "
          f"{args.rounds} phases of {args.phase:.0f} s ({' '.join(_python())})")
    print_table(results)
    print(f"one uprobe hit, empty program, at {hit['site']}: {hit['ns_per_hit']:.0f} ns")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "probe_hit": hit}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
