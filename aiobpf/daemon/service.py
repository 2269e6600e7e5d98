"""The daemon: discovery, capture within the budget, memory reads, metrics and dumps.

Threads: the main loop (scans, BPF counters, capture windows; never blocks on a
large process), one reader (memory reads of each process in turn, for the gauges),
the metrics server (prometheus_client's, serving the state the loop last
published) and the dump server.  One process failing is counted and dropped, never
fatal to the others.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from aiobpf import errors
from aiobpf.cli.common import translate_errors
from aiobpf.cli.output import FORMATS, render
from aiobpf.collector import probe_cost
from aiobpf.collector.loader import (
    DAEMON_LIMITS,
    Attachment,
    Capture,
    CaptureUnavailable,
    TargetStats,
)
from aiobpf.collector.memory import ProcessGone, RemoteReadError
from aiobpf.collector.objects import DecodeError
from aiobpf.collector.probe_cost import ProbeCosts
from aiobpf.collector.procfs import ProcessNotFound
from aiobpf.collector.snapshot import Collector, trim_heap
from aiobpf.collector.target import NoAsyncio, NotPython, Target, UnsupportedPython, open_target
from aiobpf.daemon.budget import FileWindow, full_overhead
from aiobpf.daemon.config import Config
from aiobpf.daemon.discovery import Candidate, Discovery
from aiobpf.exporters.prometheus import (
    DaemonState,
    ProcessView,
    SnapshotSummary,
    StepCounts,
    Summarizer,
)

log = logging.getLogger("aiobpf")
TICK_S = 0.2
FALLBACK_COSTS = ProbeCosts(trap_s=5e-6, syscall_s=0.5e-6)   # when timing fails: pessimistic
RATE_SMOOTHING = 0.5       # weight of the newest window in the step and CPU rates
BIG_READ_TASKS = 10_000     # after a read of this many tasks, freed heap goes back
PRUNE_INTERVAL_S = 5.0      # the BPF maps are cleared of stale records and exited threads
_GONE = (ProcessGone, ProcessNotFound, psutil.NoSuchProcess, FileNotFoundError,
         ProcessLookupError)


@dataclass
class Traced:
    """One traced process and what has been measured of it."""

    candidate: Candidate
    target: Target
    collector: Collector
    attachment: Attachment | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    summary: SnapshotSummary | None = None
    pending_at_start: int | None = None
    counts: StepCounts = field(default_factory=StepCounts)
    held: StepCounts = field(default_factory=StepCounts)   # seen in the open window
    held_s: float = 0.0                                     # ... in this many seconds
    rate: StepCounts = field(default_factory=StepCounts)    # per second, last window
    last: TargetStats | None = None
    hits: int = 0
    traced_s: float = 0.0
    attached_s: float = 0.0
    step_rate: float = 0.0
    cpu_rate: float = 0.0
    cpu_seen: tuple[float, float, int, int] | None = None  # (monotonic, CPU s, steps, prog ns)
    step_cost: float = 0.0                              # seconds one captured step costs
    overhead_full: float = 0.0
    next_read: float = 0.0
    gone: bool = False

    @property
    def pid(self) -> int:
        return self.target.pid

    @property
    def file(self) -> tuple[int, int] | None:
        return self.attachment.file if self.attachment and self.attachment.active else None

    def close(self) -> None:
        with self.lock:
            self.collector.close()
            self.target.close()


class Daemon:
    def __init__(self, config: Config, *, pids: list[int] | None = None) -> None:
        self.config = config
        self.discovery = Discovery(config.select, only=pids)
        self.traced: dict[int, Traced] = {}
        self.windows: dict[tuple[int, int], FileWindow] = {}
        self.errors: Counter[str] = Counter()
        self.state = DaemonState()
        self.last_scan = 0.0
        self._next_prune = 0.0
        self._bpf_lock = threading.RLock()
        self._stop = threading.Event()
        self.capture: Capture | None = None
        self.costs: ProbeCosts | None = None
        if not config.bpf:
            log.info("BPF capture is off (bpf = false): metrics come from memory reads only")
        else:
            try:
                self.capture = Capture(DAEMON_LIMITS)
            except CaptureUnavailable as exc:
                log.warning("BPF capture is off (%s); metrics come from memory reads only", exc)
        if self.capture is not None and config.fixed_probe_cost is None:
            self.costs = self._calibrate(self.capture)
        self._reader = threading.Thread(target=self._read_loop, name="aiobpf-reader",
                                        daemon=True)

    @staticmethod
    def _calibrate(capture: Capture) -> ProbeCosts:
        """Time a uprobe hit and the syscall hooks' toll on this machine."""
        try:
            costs = probe_cost.measure(capture)
        except (OSError, CaptureUnavailable) as exc:
            costs = FALLBACK_COSTS
            log.warning("could not time the probes (%s); assuming %.1f us per hit",
                        exc, costs.trap_s * 1e6)
        log.info("a uprobe hit costs %.2f us, the syscall hooks %.2f us per system call",
                 costs.trap_s * 1e6, costs.syscall_s * 1e6)
        return costs

    # -- lifecycle ----------------------------------------------------------------------
    def run(self) -> None:
        """Trace until ``stop()``; everything is released on the way out."""
        self._reader.start()
        next_scan = 0.0
        last = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_scan:
                    self._scan(now)
                    next_scan = now + self.config.scan_interval
                self._account(now - last, now)
                last = now
                self._publish()
                self._stop.wait(TICK_S)
        finally:
            self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        for pid in list(self.traced):
            self._drop(pid, "stopping")
        if self.capture is not None:
            with self._bpf_lock:
                self.capture.close()
            self.capture = None

    # -- discovery ----------------------------------------------------------------------
    def _scan(self, now: float) -> None:
        try:
            fresh, gone = self.discovery.scan(now)
        except Exception as exc:
            self.errors["scan"] += 1
            log.warning("scan failed: %s", exc)
            return
        if self.discovery.only:
            for pid in self.discovery.passed_over:
                log.warning("pid %d: not traced: it runs no CPython (none in its mappings)", pid)
        for pid in gone:
            self._drop(pid, "exited or exec'd")
        for pid in [p for p, t in self.traced.items() if t.gone]:
            self._drop(pid, "gone")
            self.discovery.forget(pid)
        if now >= self._next_prune:
            self._prune()
            self._next_prune = now + PRUNE_INTERVAL_S
        for candidate in fresh:
            if len(self.traced) >= self.config.max_processes:
                self.errors["too_many_processes"] += 1
                self.discovery.settle(candidate.identity.pid, "waiting", now)
                continue
            verdict = self._attach(candidate)
            self.discovery.settle(candidate.identity.pid, verdict, now)
        self.last_scan = time.time()

    def _prune(self) -> None:
        """Records no reader will use and the states of exited threads leave the maps."""
        if self.capture is None:
            return
        try:
            with self._bpf_lock:
                records, threads = self.capture.prune()
        except Exception as exc:  # bcc raises bare Exceptions
            self.errors["bpf_prune"] += 1
            log.warning("the BPF maps could not be pruned: %s", exc)
            return
        if records or threads:
            log.debug("pruned %d records and %d thread states", records, threads)

    def _attach(self, candidate: Candidate) -> str:
        """Trace ``candidate`` if it is an asyncio CPython; the discovery verdict."""
        try:
            return self._try_attach(candidate)
        except Exception as exc:  # one bad process must never stop the others
            self.errors["internal"] += 1
            log.warning("pid %d: not traced: unexpected %s: %s", candidate.identity.pid,
                        type(exc).__name__, exc)
            return "ignored"

    def _try_attach(self, candidate: Candidate) -> str:
        pid = candidate.identity.pid
        target: Target | None = None
        collector: Collector | None = None

        def release() -> None:
            if collector is not None:
                collector.close()
            if target is not None:
                target.close()

        summarizer = Summarizer(self.config.top_sites)
        try:
            target = open_target(pid)
            collector = Collector(target)
            try:
                snapshot = collector.snapshot(details=False, sink=summarizer.add, names=False)
            finally:
                collector.forget(trim=summarizer.pending >= BIG_READ_TASKS)
        except NoAsyncio as exc:
            release()
            if self.discovery.only:
                log.warning("pid %d: %s; looking again later", pid, exc)
            return "waiting"
        except (NotPython, UnsupportedPython) as exc:
            release()
            # asked for by PID (the exporter): say why; found by a scan: not news
            (log.warning if self.discovery.only else log.info)("pid %d: not traced: %s",
                                                                pid, exc)
            return "ignored"
        except _GONE:
            release()
            return "ignored"
        except (RemoteReadError, DecodeError, OSError) as exc:
            release()
            self.errors["read"] += 1
            log.warning("pid %d: could not be read (%s); will try again", pid, exc)
            return "waiting"
        except BaseException:
            release()
            raise
        attachment = None
        if self.capture is not None:
            try:
                with self._bpf_lock:
                    attachment = self.capture.add(target)
            except (CaptureUnavailable, OSError) as exc:
                self.errors["attach"] += 1
                log.warning("pid %d: probes not placed: %s", pid, exc)
        traced = Traced(candidate, target, collector, attachment)
        traced.summary = summarizer.finish(snapshot.duration_s)
        traced.pending_at_start = traced.summary.pending
        traced.next_read = time.monotonic() + self.config.refresh_interval
        self.traced[pid] = traced
        if traced.file is not None:
            self.windows.setdefault(traced.file, FileWindow(self.config.window))
        log.info("pid %d (%s, Python %s%s): traced, %s", pid, candidate.name,
                 target.version_str, f", container {candidate.container}"
                 if candidate.container else "", self._capture_kind(traced))
        return "candidate"

    def _drop(self, pid: int, why: str) -> None:
        traced = self.traced.pop(pid, None)
        if traced is None:
            return
        if self.capture is not None:
            with self._bpf_lock, contextlib.suppress(Exception):
                self.capture.remove(pid)
        file = traced.file
        if file is not None and file in self.windows:
            self.windows[file].overheads.pop(pid, None)
            if not any(t.file == file for t in self.traced.values()):
                del self.windows[file]
        traced.close()
        if traced.summary is not None and traced.summary.pending >= BIG_READ_TASKS:
            trim_heap()   # what reading it took goes back to the system
        log.info("pid %d: no longer traced (%s)", pid, why)

    # -- BPF counters and the budget ---------------------------------------------------------
    def _account(self, dt: float, now: float) -> None:
        if self.capture is None:
            return
        for traced in list(self.traced.values()):
            try:
                self._account_one(traced, dt, now)
            except Exception as exc:  # one bad process must never stop the others
                self.errors["internal"] += 1
                traced.gone = True
                log.warning("pid %d: dropped: unexpected %s: %s", traced.pid,
                            type(exc).__name__, exc)
        self._schedule(now)

    def _account_one(self, traced: Traced, dt: float, now: float) -> None:
        """Counters since the last tick, and the rates the budget is planned with."""
        file = traced.file
        if self.capture is None or file is None:
            return
        window = self.windows[file]
        attached = self.capture.is_attached(file)
        with self._bpf_lock:
            stats = self.capture.stats(traced.pid)
        if stats is None:
            return
        if attached:
            self._count(traced, stats, dt)
        else:
            traced.last = stats
            traced.counts.add(traced.rate, dt)   # estimated from the last window
            self._derive_created(traced)
        traced.traced_s += dt
        cpu = self._cpu_time(traced)
        if attached:
            traced.attached_s += dt
            self._measure(traced, stats, cpu, now)
        window.overheads[traced.pid] = traced.overhead_full

    def _schedule(self, now: float) -> None:
        """Attach or detach each file's probes as its window plan says."""
        if self.capture is None:
            return
        for file, window in self.windows.items():
            window.plan(self.config.budget)
            change = window.step(now)
            if change is None:
                continue
            with self._bpf_lock:
                started = time.monotonic()
                if change:
                    self.capture.resume(file)
                else:
                    self.capture.pause(file)
                took = time.monotonic() - started
            if not change:
                window.detach_took(took)
                for traced in self.traced.values():
                    if traced.file == file:
                        traced.attached_s += took   # the next tick sees them detached
                self._close_window(file)
            window.attached = change
            for traced in self.traced.values():
                if traced.file == file:
                    traced.cpu_seen = None   # rates are measured within one window

    def _count(self, traced: Traced, stats: TargetStats, dt: float) -> None:
        """Add what the programs counted since the last look (probes attached), and
        keep it to learn the rates of the current window."""
        last = traced.last
        traced.last = stats
        # Faults since the process was added count from zero; steps from the first look.
        seen = last or TargetStats()
        if stats.read_errors > seen.read_errors:
            self.errors["bpf_read"] += stats.read_errors - seen.read_errors
        if stats.records_dropped > seen.records_dropped:   # read from memory instead
            self.errors["bpf_records_full"] += stats.records_dropped - seen.records_dropped
        if last is None:
            return
        delta = StepCounts(
            steps=stats.steps - last.steps,
            finished=stats.finished - last.finished,
            step_hist=[float(a - b) for a, b in zip(stats.step_hist, last.step_hist,
                                                    strict=True)],
            step_sum_ns=stats.step_ns_sum - last.step_ns_sum,
            delay_hist=[float(a - b) for a, b in zip(stats.delay_hist, last.delay_hist,
                                                     strict=True)],
            delay_sum_ns=stats.delay_ns_sum - last.delay_ns_sum,
        )
        traced.hits += int(delta.steps)
        traced.counts.add(delta)
        traced.held.add(delta)
        traced.held_s += dt
        self._derive_created(traced)

    @staticmethod
    def _derive_created(traced: Traced) -> None:
        """created - finished = the change in pending tasks (never decreasing)."""
        c = traced.counts
        pending = traced.summary.pending if traced.summary else 0
        c.created = max(c.created, c.finished + pending - (traced.pending_at_start or 0))

    def _close_window(self, file: tuple[int, int]) -> None:
        """A window of ``file`` closed: the rates it saw stand for the time until the
        next one (added tick by tick, so the estimates never run ahead of time)."""
        for traced in self.traced.values():
            if traced.file == file:
                traced.rate = StepCounts()
                if traced.held_s > 0:
                    traced.rate.add(traced.held, 1.0 / traced.held_s)
                traced.held, traced.held_s = StepCounts(), 0.0

    def _cpu_time(self, traced: Traced) -> float | None:
        try:
            times = psutil.Process(traced.pid).cpu_times()
        except psutil.Error:
            traced.gone = True
            return None
        return times.user + times.system

    def _measure(self, traced: Traced, stats: TargetStats, cpu: float | None,
                 now: float) -> None:
        """Step and CPU rates over the last stretch with probes attached."""
        if cpu is None:
            return
        seen = traced.cpu_seen
        if seen is None:
            traced.cpu_seen = (now, cpu, stats.steps, stats.prog_ns_sum)
            return
        span = now - seen[0]
        if span < min(1.0, 0.6 * self.config.window):
            return
        traced.cpu_seen = (now, cpu, stats.steps, stats.prog_ns_sum)
        steps = stats.steps - seen[2]
        step_rate = steps / span
        cpu_rate = (cpu - seen[1]) / span
        a = RATE_SMOOTHING if traced.cpu_rate else 1.0   # the first measure stands alone
        traced.step_rate = a * step_rate + (1 - a) * traced.step_rate
        traced.cpu_rate = a * cpu_rate + (1 - a) * traced.cpu_rate
        cost = self.config.fixed_probe_cost
        if cost is None and self.costs is not None and steps > 0:
            measured = self.costs.per_step((stats.prog_ns_sum - seen[3]) / 1e9 / steps)
            cost = a * measured + (1 - a) * traced.step_cost if traced.step_cost else measured
        traced.step_cost = cost if cost is not None else traced.step_cost
        traced.overhead_full = full_overhead(traced.step_rate, traced.cpu_rate,
                                             traced.step_cost)
        log.debug("pid %d: %.0f steps/s, %.2f CPU s/s, %.2f us per captured step: full "
                  "capture would cost %.1f%%", traced.pid, traced.step_rate, traced.cpu_rate,
                  traced.step_cost * 1e6, 100 * traced.overhead_full)

    # -- memory reads -------------------------------------------------------------------
    def _read_loop(self) -> None:
        while not self._stop.is_set():
            due = sorted((t for t in list(self.traced.values()) if not t.gone),
                         key=lambda t: t.next_read)
            if not due or due[0].next_read > time.monotonic():
                self._stop.wait(TICK_S)
                continue
            try:
                self._refresh(due[0])
            except Exception as exc:  # the reader serves every process: it never stops
                self.errors["internal"] += 1
                due[0].gone = True
                log.warning("pid %d: dropped: unexpected %s: %s", due[0].pid,
                            type(exc).__name__, exc)

    def _refresh(self, traced: Traced) -> None:
        started = time.monotonic()
        try:
            # Tasks are summarized as they are read, never all held at once.
            summarizer = Summarizer(self.config.top_sites)
            with traced.lock:
                try:
                    snapshot = traced.collector.snapshot(details=False,
                                                         records=self._records(traced),
                                                         sink=summarizer.add, names=False)
                finally:   # nothing kept between reads; a big read's heap goes back
                    traced.collector.forget(trim=summarizer.pending >= BIG_READ_TASKS)
            traced.summary = summarizer.finish(snapshot.duration_s)
        except NoAsyncio:
            traced.summary = SnapshotSummary()
        except _GONE:
            traced.gone = True
        except (RemoteReadError, DecodeError, OSError) as exc:
            self.errors["read"] += 1
            log.warning("pid %d: memory read failed: %s", traced.pid, exc)
        # A process whose read takes long is read less often: the reader's share of
        # CPU stays bounded.
        took = time.monotonic() - started
        traced.next_read = time.monotonic() + max(self.config.refresh_interval, 10 * took)

    def _records(self, traced: Traced) -> dict | None:
        """BPF records valid now: only those taken since the probes were last attached
        (a task that stepped while they were off has an outdated record)."""
        if self.capture is None or traced.file is None:
            return None
        with self._bpf_lock:
            since = self.capture.attached_since(traced.file)
            if since is None:
                return None
            return self.capture.records(traced.pid, since_ns=since)

    # -- what scrapes and dumps see -------------------------------------------------------------
    def _capture_kind(self, traced: Traced) -> str:
        if traced.file is None:
            return "memory"
        window = self.windows.get(traced.file)
        return "windowed" if window is not None and window.duty < 1.0 else "full"

    def _publish(self) -> None:
        views = []
        for traced in list(self.traced.values()):
            window = self.windows.get(traced.file) if traced.file else None
            fraction = traced.attached_s / traced.traced_s if traced.traced_s else (
                1.0 if traced.file else 0.0)
            duty = window.duty if window else 0.0
            views.append(ProcessView(
                pid=traced.pid, process=traced.candidate.name,
                python=traced.target.version_str, container=traced.candidate.container,
                capture=self._capture_kind(traced), summary=traced.summary,
                counts=traced.counts, probe_hits=traced.hits, capture_fraction=fraction,
                attached_seconds=traced.attached_s,
                overhead=traced.overhead_full * duty, step_cost=traced.step_cost))
        self.state = DaemonState(views, Counter(self.errors), self.last_scan)

    def current_state(self) -> DaemonState:
        return self.state

    def dump(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer a dump request (see aiobpf.daemon.dumps)."""
        pid = request["pid"]
        fmt = request.get("format", "tree")
        traced = self.traced.get(pid)
        if traced is None or traced.gone:
            return {"fallback": f"process {pid} is not traced by this daemon"}
        if fmt not in FORMATS:
            return {"error": f"unknown format {fmt!r}", "exit_code": errors.EXIT_USAGE}
        records = None if request.get("capture") == "memory" else self._records(traced)
        if request.get("capture") == "bpf" and records is None:
            return {"fallback": "the daemon's probes are off now (windowed capture)"}
        out: list[str] = []
        try:
            with translate_errors(pid), traced.lock:
                try:
                    snapshot = traced.collector.snapshot(details=fmt == "json",
                                                         records=records)
                finally:
                    traced.collector.mem.clear()
            out.extend(render(snapshot, fmt))
        except errors.AiobpfError as exc:
            return {"output": "".join(out), "error": exc.message, "hint": exc.hint,
                    "exit_code": exc.exit_code}
        return {"output": "".join(out), "notes": []}


def serve(daemon: Daemon, socket_path: Path | None) -> None:
    """Run ``daemon`` with its metrics endpoint (and dump socket) until stopped."""
    from aiobpf.daemon.dumps import DumpServer
    from aiobpf.daemon.metrics_server import start_metrics_server

    host, port = daemon.config.listen_address
    server = start_metrics_server(host, port, daemon.current_state)
    dumps = DumpServer(socket_path, daemon.dump) if socket_path else None
    if dumps:
        dumps.start()
    log.info("metrics on http://%s:%d/metrics%s", host, port,
             f", dumps on {socket_path}" if socket_path else "")
    try:
        daemon.run()
    finally:
        if dumps:
            dumps.close()
        server.shutdown()
        server.server_close()
