#!/usr/bin/env python3
"""The daemon's cost, side by side in one run.

(a) tracing overhead at the default budget (1% of the target's CPU time): the same
    target with no tracer and with `aiobpf exporter --pid PID` (the daemon's code,
    default settings), in alternating phases: the worst-case queue ping-pong and the
    asyncio-streams HTTP server under wrk (bench/overhead.py's workloads);
(b) the daemon with 50 traced processes: its RSS and the time of one scrape.

Phases must be long: at the default budget, windowed capture attaches the probes
for a fraction of a second every half minute (an HTTP server) to two minutes (the
ping-pong), and each traced phase starts a new daemon.  Each traced phase is seen
two ways: against the untraced phases around it ("more"), and against its own
seconds far from any window ("in-phase": the target and the daemon are asked for
their counts every second), which the VM's drift between phases does not blur.

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
import threading
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from overhead import (  # noqa: E402
    OpsCounter,
    _python,
    _start_target,
    bench_http,
    bench_pingpong,
)

from aiobpf.collector.procfs import process_cpu_s  # noqa: E402


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
BIN_S = 1.0      # the in-phase view: the target and the daemon looked at every second
NEAR_BINS = 2    # bins either side of one with probes attached that count as "near"


def in_phase_cost(samples: list[tuple[float, int, float, float]]) -> dict[str, float]:
    """What the windows cost, from within one traced phase.

    ``samples``: (time, target operations, target CPU s, probes attached s) every
    BIN_S.  The target's CPU per operation in the bins far from any window (no probe
    attached within NEAR_BINS) is the phase's own baseline; whatever the phase used
    beyond baseline x operations is what the windows cost, attach and detach included.
    Unlike the comparison with untraced phases, this is immune to the VM's drift
    between phases; it does not see a cost spread evenly over the phase (the
    daemon's memory reads: ``--tracers memory`` measures those)."""
    bins = [(b[1] - a[1], b[2] - a[2], b[3] - a[3]) for a, b in itertools.pairwise(samples)]
    hot = [attached > 0 for _, _, attached in bins]
    near = [any(hot[max(0, i - NEAR_BINS):i + NEAR_BINS + 1]) for i in range(len(bins))]
    quiet_ops = sum(ops for (ops, _, _), n in zip(bins, near, strict=True) if not n)
    quiet_cpu = sum(cpu for (_, cpu, _), n in zip(bins, near, strict=True) if not n)
    ops = sum(b[0] for b in bins)
    windows = sum(1 for i, h in enumerate(hot) if h and (i == 0 or not hot[i - 1]))
    if not quiet_ops or not ops or not windows:   # no window: nothing to measure
        return {"percent": float("nan"), "windows": float(windows)}
    base = quiet_cpu / quiet_ops
    excess = sum(b[1] for b in bins) - base * ops
    return {"percent": 100 * excess / (base * ops), "windows": float(windows),
            "excess_ms_per_window": 1000 * excess / windows}


class DaemonTracer:
    """`aiobpf exporter --pid PID` at its default budget, for the whole phase.

    While it runs, a thread asks the target and the daemon every BIN_S for their
    counts: ``phase_info()`` sums the phase up (attached time, the daemon's estimates,
    and ``in_phase_cost``)."""

    label = "daemon, default budget"
    options: ClassVar[list[str]] = []
    settle_s = SETTLE_S

    def __init__(self, pid: int, counter: OpsCounter) -> None:
        self.pid, self.counter = pid, counter
        self.port = _port()
        self.proc: subprocess.Popen | None = None
        self.samples: list[tuple[float, int, float, float]] = []
        self.latest = ""
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)

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
            now = self._attached(_scrape(self.port))
            if now == attached:
                break
            attached = now
            time.sleep(0.5)
        self._sampler.start()

    def _attached(self, text: str) -> float:
        return _sample(text, "aiobpf_probes_attached_seconds_total", self.pid) or 0.0

    def _sample_loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            text = _scrape(self.port)
            ops, cpu = self.counter()
            self.samples.append((time.monotonic(), ops, cpu, self._attached(text)))
            self.latest = text
            next_at += BIN_S
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def steps(self) -> int:
        """Probe hits so far."""
        return int(_sample(_scrape(self.port), "aiobpf_probe_hits_total", self.pid) or 0)

    def phase_info(self) -> dict[str, float]:
        """The phase so far: time with probes attached (a fraction), the daemon's
        overhead estimate and per-step cost, and ``in_phase_cost``."""
        if len(self.samples) < 2:
            return {}
        (t0, *_, a0), (t1, *_, a1) = self.samples[0], self.samples[-1]
        return {"fraction": (a1 - a0) / (t1 - t0),
                "overhead": _sample(self.latest, "aiobpf_estimated_overhead_ratio",
                                    self.pid) or 0.0,
                "step_cost": _sample(self.latest, "aiobpf_step_cost_seconds", self.pid) or 0.0,
                **in_phase_cost(self.samples)}

    def pid_of_tracer(self) -> int:
        assert self.proc
        return self.proc.pid

    def stop(self) -> None:
        self._stop.set()
        if self._sampler.is_alive():
            self._sampler.join()
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


class TenfoldTracer(DaemonTracer):
    """`aiobpf exporter --pid PID --budget 0.1`: the same windows, about ten times as
    much attached time (up to full capture for a light target).  The cost is then well
    above the VM's noise; scaled back by the attached time, a sharper figure for the
    default budget, if cost follows attached time (which both together check)."""

    label = "daemon, budget 10%"
    options: ClassVar[list[str]] = ["--budget", "0.1"]


TRACERS = {"budget": DaemonTracer, "memory": MemoryOnlyTracer, "full": FullCaptureTracer,
           "tenfold": TenfoldTracer}


def fifty(count: int) -> dict:
    """RSS and scrape time of the daemon tracing ``count`` processes."""
    targets = []
    work = Path(tempfile.mkdtemp(prefix="aiobpf-bench-"))
    script = work / "bench_target.py"
    script.write_text((REPO / "tests" / "targets" / "alternating.py").read_text())
    try:
        for _ in range(count):
            targets.append(_start_target([*_python(), "-u", str(script), "4", "0.05"]))
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
            cpu0 = process_cpu_s(daemon.pid)
            time.sleep(15)  # memory reads and capture windows of every process
            cpu_share = (process_cpu_s(daemon.pid) - cpu0) / 15
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


def _mean_se(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v == v]   # phases without a quiet second give NaN
    if len(values) < 2:
        return (values[0] if values else float("nan"), float("nan"))
    return statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5


def summarize(infos: list[dict[str, float]]) -> dict:
    """The traced phases' ``phase_info()`` in one row."""
    infos = [i for i in infos if i]
    if not infos:
        return {"fraction": 0.0, "overhead": 0.0, "step_cost": 0.0, "windows": 0.0,
                "in_phase": (float("nan"), float("nan"))}
    return {"fraction": statistics.fmean(i["fraction"] for i in infos),
            "overhead": statistics.median(i["overhead"] for i in infos),
            "step_cost": statistics.median(i["step_cost"] for i in infos),
            "windows": sum(i["windows"] for i in infos),
            "in_phase": _mean_se([i["percent"] for i in infos])}


def _scaled(rows: list[tuple[dict, dict]]) -> list[str]:
    """The tenfold rows' cost, scaled to the default budget's attached time."""
    lines = []
    for r, info in rows:
        if not r["name"].endswith(TenfoldTracer.label):
            continue
        default = next((i for d, i in rows if d["workload"] == r["workload"]
                        and d["name"].endswith(DaemonTracer.label)), None)
        if default is None or not info["fraction"]:
            continue
        ratio = default["fraction"] / info["fraction"]
        (more, more_se), (inside, inside_se) = r["cpu_paired"], info["in_phase"]
        lines.append(f"{r['name'].split(':')[0]}: at the default budget's attached time "
                     f"({100 * default['fraction']:.2f}%, {ratio:.3f} of budget 10%'s), the "
                     f"cost at budget 10% scales to {ratio * more:+.2f} ± "
                     f"{ratio * more_se:.2f}% (more), {ratio * inside:+.2f} ± "
                     f"{ratio * inside_se:.2f}% (in-phase)")
    return lines


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
    parser.add_argument("--tracers", default="memory,budget,tenfold",
                        help="comma-separated: memory (--no-bpf), budget (the default), "
                        "tenfold (--budget 0.1: ten times the attached time), "
                        "full (--budget 1: checks the daemon's cost estimate)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: BPF capture needs it")
    rows = []
    benches = {"pingpong": bench_pingpong, "http": bench_http}
    for name in filter(None, args.workloads.split(",")):
        if name not in benches:
            parser.error(f"unknown workload {name!r}")
        variants = list(filter(None, args.tracers.split(",")))
        for variant in variants:
            if variant not in TRACERS:
                parser.error(f"unknown tracer {variant!r}")
        tracers = [TRACERS[v] for v in variants]
        for result, tracer in zip(benches[name](args.phase, args.rounds, tracers), tracers,
                                  strict=True):
            result["name"] = f"{result['name'].split(' (')[0]}: {tracer.label}"
            result["workload"] = name
            rows.append((result, summarize(result["phases"]["info"])))
    scale = fifty(args.processes) if args.processes else None
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "scale": scale}, indent=2))
    print(f"daemon overhead at the default budget (1%), same process, off/on alternating, "
          f"{args.rounds} phases of {args.phase:.0f} s each ({' '.join(_python())})")
    print(f"{'workload: tracer':<45} {'off':>8} {'on':>8} {'loss':>6} {'noise':>6} "
          f"{'CPU/op':>8} {'on':>8} {'more':>6} {'±':>5} {'in-phase':>8} {'±':>5} "
          f"{'windows':>7} {'daemon':>7} {'captured':>8} {'est.':>5} {'cost/step':>9}")
    for r, info in rows:
        daemon_cpu = 100 * r["tracer_cpu"] if r["tracer_cpu"] is not None else float("nan")
        print(f"{r['name']:<45} {r['off']:>8.0f} {r['on']:>8.0f} {r['loss_percent']:>5.1f}% "
              f"{_noise(r['off_phases']):>5.1f}% {r['cpu_us_off']:>6.2f}us "
              f"{r['cpu_us_on']:>6.2f}us {r['cpu_paired'][0]:>5.2f}% "
              f"{r['cpu_paired'][1]:>4.2f}% {info['in_phase'][0]:>7.2f}% "
              f"{info['in_phase'][1]:>4.2f}% {info['windows']:>7.0f} {daemon_cpu:>6.1f}% "
              f"{100 * info['fraction']:>7.2f}% {100 * info['overhead']:>4.1f}% "
              f"{1e6 * info['step_cost']:>7.2f}us")
    print("loss: throughput lost; noise: median change between consecutive phases without "
          "a tracer (the VM's drift); CPU/op: the target's CPU time per operation, off and "
          "on (medians); more: CPU/op added, mean of each traced phase against the untraced "
          "phases around it, ± its standard error; in-phase: CPU/op added, each traced "
          "phase against its own seconds far from any window (immune to the drift between "
          "phases, blind to a cost spread evenly: see the memory-only row), mean ± standard "
          "error; windows: how many the traced phases held in all; daemon: the daemon's own "
          "CPU, % of a core; captured: time with probes attached (all traced phases), "
          "which start after the first window (a one-time full capture until the daemon "
          "knows the cost); est.: the daemon's own overhead estimate; cost/step: its "
          "measured cost of a captured step (medians)")
    for line in _scaled(rows):
        print(line)
    for r, info in rows:
        windowed = r["name"].endswith((DaemonTracer.label, TenfoldTracer.label))
        if windowed and not info["fraction"]:
            print(f"{r['name']}: no window opened in a traced phase (each starts a new "
                  "daemon, and its pause after the first window outlasted the phase): "
                  "the in-phase view needs a longer --phase")
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
