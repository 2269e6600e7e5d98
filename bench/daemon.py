#!/usr/bin/env python3
"""The daemon's cost, side by side in one run.

(a) tracing overhead at the default budget (1% of the target's CPU time): the same
    target with no tracer and with `aiobpf exporter --pid PID` (the daemon's code,
    default settings), in alternating phases: the worst-case queue ping-pong and the
    asyncio-streams HTTP server under wrk (bench/overhead.py's workloads);
(b) the daemon with 50 traced processes: its RSS and the time of one scrape.

Phases must be long: at the default budget, windowed capture attaches the probes
for a fraction of a second every few tens of seconds.

Run as root: ``.venv/bin/python bench/daemon.py [--phase 60] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from overhead import _cpu_seconds, _python, bench_http, bench_pingpong  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int, timeout: float = 10) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return r.read().decode()


def _sample(text: str, name: str, pid: int | None = None) -> float | None:
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and (pid is None or f'pid="{pid}"' in line):
            return float(line.rsplit(" ", 1)[1])
    return None


def _wait(port: int, check, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = _scrape(port)
            if check(text):
                return text
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the daemon did not trace the target(s) in time")
        time.sleep(0.2)


SETTLE_S = 5.0


class DaemonTracer:
    """`aiobpf exporter --pid PID` at its default budget, for the whole phase."""

    label = "daemon, default budget"
    options: ClassVar[list[str]] = []
    settle_s = SETTLE_S
    last: ClassVar[dict[str, float]] = {}
    fractions: ClassVar[list[float]] = []     # attached, per phase

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.port = _port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiobpf", "exporter", "--pid", str(self.pid),
             "--listen", f"127.0.0.1:{self.port}", *self.options], cwd=REPO,
            start_new_session=True)
        _wait(self.port, lambda t: _sample(t, "aiobpf_process_info", self.pid) is not None)
        # Measure the steady state: the daemon starts with its probes attached until
        # it knows what full capture costs (about a second), a one-time cost.
        deadline = time.monotonic() + self.settle_s
        while time.monotonic() < deadline and 'capture="windowed"' not in "".join(
                line for line in _scrape(self.port).splitlines()
                if line.startswith("aiobpf_process_info")):
            time.sleep(0.2)
        # ... and the end of that first window: the phase starts with probes detached.
        attached = -1.0
        while time.monotonic() < deadline + self.settle_s:
            now = _sample(_scrape(self.port), "aiobpf_probes_attached_seconds_total", self.pid)
            if now == attached:
                break
            attached = now
            time.sleep(0.5)
        self.seen: list[tuple[float, float]] = []

    def steps(self) -> int:
        """Probe hits so far; the second call also sums up the phase in ``last``."""
        text = _scrape(self.port)
        attached = _sample(text, "aiobpf_probes_attached_seconds_total", self.pid) or 0.0
        self.seen.append((time.monotonic(), attached))
        if len(self.seen) == 2:
            (t0, a0), (t1, a1) = self.seen
            DaemonTracer.fractions.append((a1 - a0) / (t1 - t0))
            DaemonTracer.last = {
                "fraction": statistics.median(DaemonTracer.fractions),
                "overhead": _sample(text, "aiobpf_estimated_overhead_ratio", self.pid) or 0.0,
                "step_cost": _sample(text, "aiobpf_step_cost_seconds", self.pid) or 0.0,
            }
        return int(_sample(text, "aiobpf_probe_hits_total", self.pid) or 0)

    def pid_of_tracer(self) -> int:
        assert self.proc
        return self.proc.pid

    def stop(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.proc = None


class MemoryOnlyTracer(DaemonTracer):
    """`aiobpf exporter --pid PID --no-bpf`: the daemon's memory reads and scrapes, no
    probes: what the daemon costs a busy host apart from the probes."""

    label = "daemon, memory reads only"
    options: ClassVar[list[str]] = ["--no-bpf"]
    settle_s = 0.0


class FullCaptureTracer(DaemonTracer):
    """`aiobpf exporter --pid PID --budget 1`: probes attached all the time.  Its
    measured cost against the daemon's own estimate checks the cost model the budget
    is planned with."""

    label = "daemon, full capture (budget 1)"
    options: ClassVar[list[str]] = ["--budget", "1"]
    settle_s = 2.0


TRACERS = {"budget": DaemonTracer, "memory": MemoryOnlyTracer, "full": FullCaptureTracer}


def fifty(count: int) -> dict:
    """RSS and scrape time of the daemon tracing ``count`` processes."""
    targets = []
    work = Path(tempfile.mkdtemp(prefix="aiobpf-bench-"))
    script = work / "bench_target.py"
    script.write_text((REPO / "tests" / "targets" / "alternating.py").read_text())
    try:
        for _ in range(count):
            proc = subprocess.Popen([*_python(), "-u", str(script), "4", "0.05"],
                                    stdout=subprocess.PIPE, text=True, start_new_session=True)
            targets.append(proc)
        for proc in targets:
            assert proc.stdout and proc.stdout.readline().startswith("READY")
        port = _port()
        config = work / "aiobpf.toml"
        config.write_text(f'[daemon]\nlisten = "127.0.0.1:{port}"\n'
                          f'socket = "{work / "run" / "aiobpf.sock"}"\n'
                          f'[select]\ncmdline = ["{script}"]\n')
        daemon = subprocess.Popen([sys.executable, "-m", "aiobpf", "daemon", "--config",
                                   str(config)], cwd=REPO, start_new_session=True)
        try:
            t0 = time.monotonic()
            _wait(port, lambda t: _sample(t, "aiobpf_attached_processes") == count, 120)
            attach_s = time.monotonic() - t0
            cpu0 = _cpu_seconds(daemon.pid)
            time.sleep(15)  # memory reads and capture windows of every process
            cpu_share = (_cpu_seconds(daemon.pid) - cpu0) / 15
            times = []
            for _ in range(20):
                time.sleep(0.3)   # a new state each time: rendered, not from the cache
                t1 = time.perf_counter()
                text = _scrape(port)
                times.append(time.perf_counter() - t1)
            status = Path(f"/proc/{daemon.pid}/status").read_text()
            rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
            return {"processes": count, "attach_s": attach_s, "rss_mb": rss,
                    "cpu_percent": 100 * cpu_share,
                    "scrape_ms_median": 1000 * statistics.median(times),
                    "scrape_ms_max": 1000 * max(times), "scrape_bytes": len(text)}
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
    finally:
        for proc in targets:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _noise(off: list[float]) -> float:
    """How much the untraced throughput moves from one phase to the next, in percent."""
    steps = [abs(a - b) / a for a, b in itertools.pairwise(off)]
    return 100 * statistics.median(steps) if steps else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    parser.add_argument("--json", type=Path, help="write the raw per-phase results here")
    parser.add_argument("--processes", type=int, default=50,
                        help="traced processes for the RSS and scrape figures (0: skip)")
    parser.add_argument("--workloads", default="pingpong,http",
                        help="comma-separated: pingpong, http (empty: none)")
    parser.add_argument("--tracers", default="memory,budget",
                        help="comma-separated: memory (--no-bpf), budget (the default), "
                        "full (--budget 1: checks the daemon's cost estimate)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: BPF capture needs it")
    rows = []
    benches = {"pingpong": bench_pingpong, "http": bench_http}
    for name in filter(None, args.workloads.split(",")):
        if name not in benches:
            parser.error(f"unknown workload {name!r}")
        for variant in filter(None, args.tracers.split(",")):
            if variant not in TRACERS:
                parser.error(f"unknown tracer {variant!r}")
            tracer = TRACERS[variant]
            DaemonTracer.fractions.clear()
            result = benches[name](args.phase, args.rounds, [tracer])[0]
            result["name"] = f"{result['name'].split(' (')[0]}: {tracer.label}"
            rows.append((result, dict(tracer.last) if variant != "memory" else {}))
    scale = fifty(args.processes) if args.processes else None
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "scale": scale}, indent=2))
    print(f"daemon overhead at the default budget (1%), same process, off/on alternating, "
          f"median of {args.rounds} phases of {args.phase:.0f} s ({' '.join(_python())})")
    print(f"{'workload: tracer':<45} {'off':>8} {'on':>8} {'loss':>6} {'noise':>6} "
          f"{'CPU/op':>8} {'on':>8} {'more':>6} {'±':>5} {'daemon':>7} {'captured':>8} "
          f"{'est.':>5} {'cost/step':>9}")
    for r, last in rows:
        daemon_cpu = 100 * r["tracer_cpu"] if r["tracer_cpu"] is not None else float("nan")
        print(f"{r['name']:<45} {r['off']:>8.0f} {r['on']:>8.0f} {r['loss_percent']:>5.1f}% "
              f"{_noise(r['off_phases']):>5.1f}% {r['cpu_us_off']:>6.2f}us "
              f"{r['cpu_us_on']:>6.2f}us {r['cpu_paired'][0]:>5.2f}% "
              f"{r['cpu_paired'][1]:>4.2f}% {daemon_cpu:>6.1f}% "
              f"{100 * last.get('fraction', 0):>7.1f}% {100 * last.get('overhead', 0):>4.1f}% "
              f"{1e6 * last.get('step_cost', 0):>7.2f}us")
    print("loss: throughput lost; noise: median change between consecutive phases without "
          "a tracer (the VM's drift); CPU/op: the target's CPU time per operation, off and "
          "on (medians); more: CPU/op added, mean of each traced phase against the untraced phases "
          "around it, ± its standard error; daemon: the daemon's own CPU, % of a core; captured: "
          "median time with probes attached in a phase, which starts after the first window "
          "(a one-time full capture until the daemon knows the cost); "
          "est.: the daemon's own overhead estimate; cost/step: its measured cost of a "
          "captured step")
    if scale is None:
        return 0
    print(f"daemon with {scale['processes']} traced processes: all attached in "
          f"{scale['attach_s']:.1f} s, RSS {scale['rss_mb']:.0f} MB, CPU "
          f"{scale['cpu_percent']:.1f}% of a core, scrape "
          f"{scale['scrape_ms_median']:.1f} ms median / {scale['scrape_ms_max']:.1f} ms max "
          f"({scale['scrape_bytes'] / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
