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
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from aiobpf import errors
from aiobpf.bpf.abi import TargetStats
from aiobpf.bpf.capture import Attachment, Capture
from aiobpf.bpf.config import counts_creations
from aiobpf.bpf.probed import DAEMON_FILES
from aiobpf.bpf.program import DAEMON_LIMITS, CaptureUnavailable
from aiobpf.bpf.uprobes import LINKS
from aiobpf.collector import deadline, probe_cost
from aiobpf.collector.elf import NotElfError
from aiobpf.collector.files import UnsafeFile
from aiobpf.collector.memory import ProcessGone, ReadLimitExceeded, RemoteReadError
from aiobpf.collector.objects import DecodeError
from aiobpf.collector.probe_cost import ProbeCosts
from aiobpf.collector.probes import (
    ProbeSite,
    find_step_sites,
)
from aiobpf.collector.procfs import ProcessNotFound, ThreadTimes, thread_times
from aiobpf.collector.snapshot import Collector, trim_heap
from aiobpf.collector.target import NoAsyncio, NotPython, Target, UnsupportedPython, open_target
from aiobpf.daemon.budget.account import Faults, ProcessAccount
from aiobpf.daemon.budget.cost import CostModel, capture_budget, profile_overhead
from aiobpf.daemon.budget.estimate import Reading
from aiobpf.daemon.budget.reads import FirstReads, read_intervals
from aiobpf.daemon.budget.windows import FileWindow, next_switch
from aiobpf.daemon.config import Config
from aiobpf.daemon.discovery import Candidate, Discovery, Identity
from aiobpf.daemon.profiling import ContinuousProfiles, ProfilesUnavailable
from aiobpf.errors.translate import translate_errors
from aiobpf.exporters.prometheus import (
    Summarizer,
)
from aiobpf.exporters.render import FORMATS, render
from aiobpf.exporters.state import DaemonState, ProcessView, SnapshotSummary
from aiobpf.safe_text import NAME_MAX, SafeLogRecords, bound

log = logging.getLogger("aiobpf")
log.addFilter(SafeLogRecords())   # names and paths in messages come from targets
TICK_S = 0.2
MIN_SLEEP_S = 0.01         # the loop wakes for a window's switch, but never spins
FALLBACK_COSTS = ProbeCosts(trap_s=5e-6, syscall_s=0.5e-6,   # when timing fails: pessimistic
                            stepped_trap_s=10e-6, created_s=12e-6)
EXAMINE_LIMIT_S = 30.0     # a process's files examined within this (cold: ~2 s for libpython)
EXAMINE_GRACE_S = 5.0      # ... and abandoned this much later if the parser did not stop
MAX_EXAMINING = 4          # processes examined at once
MAX_STUCK = 8              # abandoned examinations still running: no new ones beyond this
# The longest one memory read of a process may take (a million tasks take a few seconds;
# a forged task list would take forever), for the gauges and for dumps.
READ_DEADLINE_S = 30.0
DUMP_DEADLINE_S = 120.0
DUMP_WINDOW_MAX_S = 5.0    # the longest a dump holds the probes on (its --window)
DUMP_HOLD_MARGIN_S = 0.2   # ... and this much more, for the records to be read
DUMP_ATTACH_WAIT_S = 5.0   # the loop attaches a dump's probes within this (a tick, usually)
PROFILE_MAX_S = 3600.0     # the longest profile request the daemon serves
MAX_TASKS = 1 << 20        # tasks the daemon reads of one process (a forged list costs that)
BIG_READ_TASKS = 10_000     # after a read of this many tasks, freed heap goes back
PRUNE_INTERVAL_S = 5.0      # the BPF maps are cleared of stale records and exited threads
_GONE = (ProcessGone, ProcessNotFound, psutil.NoSuchProcess, FileNotFoundError,
         ProcessLookupError)
CHANGED = ("process {pid} is not the one this daemon traced (it exec'd, or a new process "
           "has its PID): the daemon looks at it again at its next scan")


@dataclass
class Traced:
    """One traced process and what has been measured of it."""

    candidate: Candidate
    target: Target
    collector: Collector
    attachment: Attachment | None
    account: ProcessAccount = field(default_factory=ProcessAccount)   # counts, rates, costs
    lock: threading.Lock = field(default_factory=threading.Lock)
    summary: SnapshotSummary | None = None
    logged_overhead: float | None = None                # overhead_full when last logged
    accounted_at: float | None = None                   # the loop's last look at it
    next_read: float = 0.0
    read_cpu_s: float = 0.0                             # CPU time of its last memory read
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


@dataclass
class WindowRequest:
    """A dump's request for the probes of ``file``, held on for ``hold_s`` seconds:
    answered by the loop (``done``), with ``refused`` saying why not."""

    file: tuple[int, int]
    hold_s: float
    done: threading.Event = field(default_factory=threading.Event)
    refused: str | None = None


@dataclass
class Examination:
    """One process's files and memory examined by a worker thread, off the main loop,
    within EXAMINE_LIMIT_S (a deadline the ELF and DWARF parsers check)."""

    candidate: Candidate
    started: float
    top_sites: int
    library_frames: re.Pattern[str] | None   # of the config: frames that are not sites
    target: Target | None = None
    collector: Collector | None = None
    summary: SnapshotSummary | None = None   # of the first read
    truncated: bool = False                  # the first read left tasks out
    read_cpu_s: float = 0.0                  # ... and its CPU time
    cpu_s: float = 0.0                       # the whole examination's CPU time
    found: tuple[dict[str, ProbeSite], list[str]] | None = None   # probe sites and notes
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _abandoned: bool = False

    def start(self, with_probes: bool) -> None:
        threading.Thread(target=self._run, args=(with_probes,), daemon=True,
                         name=f"aiobpf-examine-{self.candidate.identity.pid}").start()

    def _run(self, with_probes: bool) -> None:
        pid = self.candidate.identity.pid
        cpu = time.thread_time()
        try:
            with deadline.limit(EXAMINE_LIMIT_S):
                self.target = open_target(pid)
                if with_probes and self.target.layout.has("type.call"):
                    # the probe sites too, within the deadline (placed by the loop)
                    holder = self.target.asyncio or self.target.core
                    self.found = find_step_sites(holder.image, None,
                                                 self.target.layout["type.call"],
                                                 task_init=counts_creations(self.target))
                self.collector = Collector(self.target, MAX_TASKS)
                summarizer = Summarizer(self.top_sites, self.library_frames)   # as read
                self.collector.mem.limit(READ_DEADLINE_S)
                read_from = time.thread_time()
                try:
                    snapshot = self.collector.snapshot(details=False, sink=summarizer.add,
                                                       names=False,
                                                       parked=summarizer.add_parked)
                finally:
                    self.collector.mem.limit(None)
                    self.collector.forget(trim=summarizer.pending >= BIG_READ_TASKS)
                    self.read_cpu_s = time.thread_time() - read_from
                self.summary = summarizer.finish(snapshot)
                self.truncated = snapshot.truncated
        except Exception as exc:
            self.error = exc
            self.release()
        finally:
            self.cpu_s = time.thread_time() - cpu
            with self._lock:
                self.done.set()
                if self._abandoned:
                    self.release()

    def abandon(self) -> None:
        """The loop gave up on this one: whatever it opens is released when it ends."""
        with self._lock:
            self._abandoned = True
            if self.done.is_set():
                self.release()
            elif self.collector is not None:
                self.collector.mem.cancel()   # a read in progress ends at once

    def release(self) -> None:
        collector, target = self.collector, self.target
        self.collector = self.target = None
        if collector is not None:
            collector.close()
        if target is not None:
            target.close()


class Daemon:
    def __init__(self, config: Config, *, pids: list[int] | None = None) -> None:
        self.config = config
        self.discovery = Discovery(config.select, only=pids)
        self.traced: dict[int, Traced] = {}
        self._examining: dict[int, Examination] = {}
        self._first_reads = FirstReads(config.read_budget)   # examinations, per user
        self._stuck: list[Examination] = []    # abandoned, their worker still running
        self.windows: dict[tuple[int, int], FileWindow] = {}
        self.errors: Counter[str] = Counter()
        self.state = DaemonState()
        self.last_scan = 0.0
        self._next_prune = 0.0
        self._bpf_lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()      # the loop's sleep ends early (stop, dumps)
        self._requests: list[WindowRequest] = []
        self._requests_lock = threading.Lock()
        self.capture: Capture | None = None
        self.capture_off = "BPF capture is off in the daemon (bpf = false)"
        self.costs: ProbeCosts | None = None
        if not config.bpf:
            log.info("BPF capture is off (bpf = false): metrics come from memory reads only")
        else:
            try:
                self.capture = Capture(DAEMON_LIMITS, DAEMON_FILES)
            except Exception as exc:  # CaptureUnavailable, or whatever else bcc raised
                self.errors[_kind(exc, "bpf_load")] += 1
                self.capture_off = f"BPF capture is off in the daemon: {_one_line(exc)}"
                log.warning("BPF capture is off (%s); metrics come from memory reads only",
                            _one_line(exc))
        if self.capture is not None and config.fixed_probe_cost is None:
            self.costs = self._calibrate(self.capture)
        self._reader = threading.Thread(target=self._read_loop, name="aiobpf-reader",
                                        daemon=True)
        self.profiles = self._start_profiles()
        # What the probes may cost: the budget less what continuous profiles take.
        self.profile_rate = config.profile_rate if self.profiles is not None else 0.0
        self.probe_budget = capture_budget(config.budget, self.profile_rate)

    def _start_profiles(self) -> ContinuousProfiles | None:
        """The continuous profiles, when asked for and possible (else one log line)."""
        config = self.config
        if not config.profiles:
            return None
        if self.capture is None:
            self.errors["profiles"] += 1
            log.warning("continuous profiles are off: %s", self.capture_off or "bpf = false")
            return None
        try:
            profiles = ContinuousProfiles(config.profile_rate, Path(config.profile_dir),
                                          config.profile_rotate, config.profile_keep)
        except ProfilesUnavailable as exc:
            self.errors["profiles"] += 1
            log.warning("continuous profiles are off: %s", exc)
            return None
        log.info("continuous profiles: %g Hz of each traced thread's CPU time, a file every "
                 "%g s in %s", config.profile_rate, config.profile_rotate, config.profile_dir)
        cost = profile_overhead(config.profile_rate)
        if config.budget < 1.0:
            (log.warning if cost >= config.budget else log.info)(
                "continuous profiles cost %.3g%% of each traced thread's CPU time: %s of "
                "the budget (%g%%)", 100 * cost, "all" if cost >= config.budget
                else f"{100 * cost / config.budget:.0f}%", 100 * config.budget)
        return profiles

    def _calibrate(self, capture: Capture) -> ProbeCosts | None:
        """Time a uprobe hit and the syscall hooks' toll on this machine.  When BPF
        refuses the calibration's uprobe or hooks, every capture needs what was refused:
        the capture is closed (nothing stays loaded) and the daemon reads memory only.
        Any other failure costs only the measure: pessimistic costs instead."""
        try:
            costs = probe_cost.measure(capture)
        except CaptureUnavailable as exc:
            self.errors["calibrate"] += 1
            log.warning("BPF calibration failed (%s); BPF capture is off, metrics come "
                        "from memory reads only", _one_line(exc))
            with self._bpf_lock:
                capture.close()
                self.capture = None
            self.capture_off = f"BPF capture is off in the daemon: {_one_line(exc)}"
            return None
        except Exception as exc:
            costs = FALLBACK_COSTS
            self.errors["calibrate"] += 1
            log.warning("could not time the probes (%s); assuming %.1f us per hit",
                        _one_line(exc), costs.trap_s * 1e6)
        log.info("a uprobe hit costs %.2f us (%.2f us on an instruction stepped out of line), "
                 "the syscall hooks %.2f us per system call; uprobes are placed as %s",
                 costs.trap_s * 1e6, costs.stepped_trap_s * 1e6, costs.syscall_s * 1e6,
                 "BPF links" if capture.uprobes.kind == LINKS else "perf events")
        return costs

    # -- lifecycle ----------------------------------------------------------------------
    def run(self) -> None:
        """Trace until ``stop()``; everything is released on the way out."""
        self._reader.start()
        if self.profiles is not None:
            self.profiles.start()
        next_scan = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_scan:
                    self._scan(now)
                    next_scan = now + self.config.scan_interval
                elif self._examining:
                    self._collect_examinations(now)   # traced as soon as examined
                self._account(now)
                self._publish()
                self._wake.wait(self._sleep_for(time.monotonic()))
                self._wake.clear()
        finally:
            self.close()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def close(self) -> None:
        self.stop()
        for pid in list(self._examining):
            self._abandon(pid)   # (its read in progress is cancelled)
        for traced in list(self.traced.values()):
            traced.collector.mem.cancel()   # a read in progress ends at its next system call
        if self.profiles is not None:   # (their last files first, while all are traced)
            with contextlib.suppress(Exception):
                self.profiles.close()
            self.profiles = None
        for pid in list(self.traced):
            self._drop(pid, "stopping")
        if self.capture is not None:
            with self._bpf_lock, contextlib.suppress(Exception):
                self.capture.close()
            self.capture = None

    # -- discovery ----------------------------------------------------------------------
    def _scan(self, now: float) -> None:
        # Processes found gone (or changed) since the last scan go first, so that the
        # scan looks at their PIDs afresh.
        for pid in [p for p, t in self.traced.items() if t.gone]:
            self._drop(pid, "gone or changed")
            self.discovery.forget(pid)
        try:
            fresh, gone = self.discovery.scan(now)
        except Exception as exc:
            self.errors["scan"] += 1
            log.warning("scan failed: %s", exc)
            return
        for pid, error in self.discovery.failed:
            self.errors["scan"] += 1
            log.warning("pid %d: not examined: unexpected %s; passed over until it changes",
                        pid, error)
        if self.discovery.only:
            for pid in self.discovery.passed_over:
                log.warning("pid %d: not traced: it runs no CPython (none in its mappings)", pid)
        for pid in gone:
            self._abandon(pid)
            self._drop(pid, "exited, exec'd, or its PID was given to a new process")
        self._check_probed_files(list(self.traced.values()))
        self._collect_examinations(now)
        if now >= self._next_prune:
            self._prune()
            self._next_prune = now + PRUNE_INTERVAL_S
        for candidate in fresh:
            pid = candidate.identity.pid
            self._drop(pid, "replaced")   # (never two at one PID)
            if len(self.traced) + len(self._examining) >= self.config.max_processes:
                self.errors["too_many_processes"] += 1
                self.discovery.settle(pid, "waiting", now)
                continue
            verdict = self._attach(candidate)
            self.discovery.settle(pid, verdict, now)
        self.last_scan = time.time()

    @staticmethod
    def _unchanged(traced: Traced) -> bool:
        """Whether ``traced``'s PID still names the process and program it was traced as
        (not after an exec, nor a new process given its PID); if not, it is marked gone:
        the next scan drops it and looks at its PID afresh."""
        if Identity.of(traced.pid) == traced.candidate.identity:
            return True
        traced.gone = True
        return False

    def _prune(self) -> None:
        """Records no reader will use and the states of exited threads leave the maps."""
        if self.capture is None:
            return
        try:
            with self._bpf_lock:
                records, threads = self.capture.prune()
        except Exception as exc:  # bcc raises bare Exceptions
            self.errors["bpf_prune"] += 1
            log.warning("the BPF maps could not be pruned: %s", _one_line(exc))
            return
        if records or threads:
            log.debug("pruned %d records and %d thread states", records, threads)

    def _attach(self, candidate: Candidate) -> str:
        """Start examining ``candidate`` off the loop (its files are parsed in a worker
        thread, within EXAMINE_LIMIT_S); the discovery verdict for now.  The result is
        picked up by ``_collect_examinations`` at a later scan."""
        pid = candidate.identity.pid
        running = self._examining.get(pid)
        if running is not None:
            if running.candidate.identity == candidate.identity:
                return "candidate"
            self._abandon(pid)        # it exec'd while examined: the old look is moot
        now = time.monotonic()
        for exam in self._stuck:
            if exam.done.is_set():   # (given up on, yet it cost what it cost)
                self._first_reads.spend(exam.candidate.uid, exam.cpu_s, now)
        self._stuck = [e for e in self._stuck if not e.done.is_set()]
        if not self._first_reads.allows(candidate.uid, now):
            # Its user's new processes have taken their share of read_budget: offered
            # again at the next scan (a user who forks big processes over and over
            # waits; other users do not).
            self.errors["examine_paced"] += 1
            self.discovery.forget(pid)
            return "waiting"
        if len(self._examining) >= MAX_EXAMINING or len(self._stuck) >= MAX_STUCK:
            # All workers busy (many new processes at once), or stuck in what earlier
            # processes named (a file system that never answers): no more threads for
            # now.  Offered again at the next scan (no growing pause: it is not its fault).
            if len(self._stuck) >= MAX_STUCK:
                self.errors["examine_busy"] += 1
            self.discovery.forget(pid)
            return "waiting"
        exam = Examination(candidate, time.monotonic(), self.config.top_sites,
                           self.config.library_frames)
        self._examining[pid] = exam
        exam.start(self.capture is not None)
        return "candidate"   # looked at by a worker: not offered again meanwhile

    def _collect_examinations(self, now: float) -> None:
        """Trace what the workers have examined, or give up on one that overran."""
        for pid, exam in list(self._examining.items()):
            if not exam.done.is_set():
                if time.monotonic() - exam.started > EXAMINE_LIMIT_S + EXAMINE_GRACE_S:
                    self._abandon(pid)
                    self.errors["examine_timeout"] += 1
                    log.warning("pid %d: not traced: examining its files takes longer than "
                                "%.0f s", pid, EXAMINE_LIMIT_S)
                    self.discovery.settle(pid, "ignored", now)
                continue
            del self._examining[pid]
            self._first_reads.spend(exam.candidate.uid, exam.cpu_s, now)
            try:
                verdict = self._try_attach(exam)
            except Exception as exc:  # one bad process must never stop the others
                exam.release()
                self.errors["internal"] += 1
                log.warning("pid %d: not traced: unexpected %s: %s", pid,
                            type(exc).__name__, exc)
                verdict = "ignored"
            self.discovery.settle(pid, verdict, now)

    def _abandon(self, pid: int) -> None:
        """Give up on examining ``pid``; its worker releases what it opened when it ends."""
        exam = self._examining.pop(pid, None)
        if exam is None:
            return
        exam.abandon()
        if not exam.done.is_set():
            self._stuck.append(exam)

    def _try_attach(self, exam: Examination) -> str:
        """Trace an examined process (or say why not); the discovery verdict."""
        candidate = exam.candidate
        pid = candidate.identity.pid
        if exam.error is None and Identity.of(pid) != candidate.identity:
            exam.release()     # exited or exec'd meanwhile: looked at afresh
            self.discovery.forget(pid)
            return "waiting"
        try:
            if exam.error is not None:
                raise exam.error
        except NoAsyncio as exc:
            if self.discovery.only:
                log.warning("pid %d: %s; looking again later", pid, exc)
            return "waiting"
        except (NotPython, UnsupportedPython) as exc:
            if isinstance(exc.__cause__, NotElfError):   # a file it maps is malformed
                self.errors["malformed_file"] += 1
            # asked for by PID (the exporter): say why; found by a scan: not news
            (log.warning if self.discovery.only else log.info)("pid %d: not traced: %s",
                                                                pid, exc)
            return "ignored"
        except deadline.Overrun:
            self.errors["examine_timeout"] += 1
            log.warning("pid %d: not traced: examining its files took longer than %.0f s",
                        pid, EXAMINE_LIMIT_S)
            return "ignored"
        except _GONE:
            return "ignored"
        except (NotElfError, UnsafeFile) as exc:
            self.errors["malformed_file"] += 1
            log.warning("pid %d: not traced: %s", pid, exc)
            return "ignored"
        except (RemoteReadError, DecodeError, OSError) as exc:
            self.errors["read_limit" if isinstance(exc, ReadLimitExceeded) else "read"] += 1
            log.warning("pid %d: could not be read (%s); will try again", pid, exc)
            return "waiting"
        assert exam.target is not None and exam.collector is not None
        assert exam.summary is not None
        target, collector = exam.target, exam.collector
        attachment = None
        if self.capture is not None:
            try:
                with self._bpf_lock:
                    attachment = self.capture.add(target, found=exam.found)
            except _GONE:
                exam.release()
                return "ignored"
            except Exception as exc:  # CaptureUnavailable, OSError, whatever bcc raised
                kind = _kind(exc, "attach")
                self.errors[kind] += 1
                if kind == "probe_file_changed":   # it swapped the file under us
                    exam.release()
                    log.warning("pid %d: not traced: %s; looking again later", pid,
                                _one_line(exc))
                    return "waiting"
                log.warning("pid %d: probes not placed (memory reads only): %s", pid,
                            _one_line(exc))
        traced = Traced(candidate, target, collector, attachment,
                        self._new_account(attachment, exam.summary.pending),
                        summary=exam.summary, read_cpu_s=exam.read_cpu_s)
        self._note_truncated(traced, exam.truncated)
        traced.next_read = time.monotonic() + self._read_interval(traced)
        traced.account.open_window(self._thread_times(traced))   # its probes are on from now
        self.traced[pid] = traced
        if self.profiles is not None:
            self.profiles.follow(target)
        if traced.file is not None:
            self.windows.setdefault(traced.file, FileWindow(self.config.window,
                                                            attached_at=time.monotonic()))
        log.info("pid %d (%s, Python %s%s): traced, %s", pid, bound(candidate.name, NAME_MAX),
                 target.version_str, f", container {candidate.container}"
                 if candidate.container else "", self._capture_kind(traced))
        return "candidate"

    def _new_account(self, attachment: Attachment | None, pending: int) -> ProcessAccount:
        """The account of a process just traced, its steps costed at its probe sites."""
        sites = attachment.sites if attachment is not None else {}
        model = CostModel.for_sites(self.costs, self.config.fixed_probe_cost,
                                    {name: site.instruction for name, site in sites.items()})
        return ProcessAccount(model, pending_at_start=pending, counts_creations=(
            attachment is not None and attachment.counts_creations))

    def _check_probed_files(self, traced: list[Traced]) -> None:
        """Drop (and look at afresh) every process of ``traced`` that no longer maps,
        where it was traced, the file whose probes it was traced with: it mapped
        another file over its _asyncio range.  The probes stay in the verified file
        (held open) for the processes that still run it."""
        if self.capture is None:
            return
        for t in traced:
            if t.file is None:
                continue
            try:
                with self._bpf_lock:
                    unchanged = self.capture.still_maps(t.pid)
            except ProcessLookupError:
                t.gone = True
                continue
            except OSError as exc:
                unchanged = False
                log.debug("pid %d: its mappings could not be checked: %s", t.pid, exc)
            if not unchanged:
                self.errors["probe_file_changed"] += 1
                log.warning("pid %d: it mapped another file where its probed file was "
                            "(probe_file_changed); looking at it afresh", t.pid)
                self._drop(t.pid, "probed file changed")
                self.discovery.forget(t.pid)

    def _degrade(self, file: tuple[int, int], exc: Exception) -> None:
        """The probes of ``file`` could not be placed again: its processes go on with
        memory reads only, and nothing of the file stays attached."""
        kind = _kind(exc, "attach")
        self.errors[kind] += 1
        users = [t for t in self.traced.values() if t.file == file]
        log.warning("probes of %s not placed again (%s): pid %s go on with memory "
                    "reads only", self._file_name(users), _one_line(exc),
                    ", ".join(str(t.pid) for t in users) or "-")
        for t in users:
            if self.capture is not None:
                with self._bpf_lock, contextlib.suppress(Exception):
                    self.capture.remove(t.pid)
            t.attachment = None
        self.windows.pop(file, None)

    @staticmethod
    def _file_name(users: list[Traced]) -> str:
        for t in users:
            holder = t.target.asyncio or t.target.core
            return Path(holder.path).name
        return "a file"

    def _drop(self, pid: int, why: str) -> None:
        traced = self.traced.pop(pid, None)
        if traced is None:
            return
        if self.profiles is not None:
            self.profiles.forget(pid)
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
    def _account(self, now: float) -> None:
        if self.capture is None:
            return
        for traced in list(self.traced.values()):
            try:
                self._account_one(traced, now)
            except Exception as exc:  # one bad process must never stop the others
                self.errors["internal"] += 1
                traced.gone = True
                log.warning("pid %d: dropped: unexpected %s: %s", traced.pid,
                            type(exc).__name__, exc)
        self._schedule(now)

    def _account_one(self, traced: Traced, now: float) -> None:
        """Counters since the last tick, and the rates the budget is planned with."""
        file = traced.file
        if self.capture is None or file is None:
            return
        if traced.accounted_at is None:   # attached by this tick's scan, which began
            dt = 0.0                      # before ``now``: its time counts from here
            traced.accounted_at = time.monotonic()
        else:
            dt = now - traced.accounted_at
            traced.accounted_at = now
        window = self.windows[file]
        attached = self.capture.is_attached(file)
        stats = self._read_counts(traced, attached)
        if stats is None:
            return
        traced.account.elapse(dt, attached)
        if attached:
            self._measure(traced, stats)
        account = traced.account
        window.overheads[traced.pid] = account.overhead_full if account.measured else None

    def _read_counts(self, traced: Traced, attached: bool) -> TargetStats | None:
        """Read the process's counters and CPU time, and account the stretch since the
        last reading as ``attached`` or not (see aiobpf.daemon.budget.estimate)."""
        assert self.capture is not None
        with self._bpf_lock:
            stats = self.capture.stats(traced.pid)
        if stats is None:
            return None
        cpu = self._cpu_time(traced)
        if cpu is not None:
            pending = traced.summary.pending if traced.summary else 0
            self._count_faults(traced.account.read(Reading(time.monotonic(), cpu, stats),
                                                   attached, pending))
        return stats

    def _schedule(self, now: float) -> None:
        """Attach or detach each file's probes as its window plan says (and as dumps
        asked: a window opened early, or held open while a dump reads)."""
        if self.capture is None:
            return
        with self._requests_lock:
            requests, self._requests = self._requests, []
        for request in requests:
            window = self.windows.get(request.file)
            request.refused = ("the daemon no longer probes this process's file"
                               if window is None else
                               window.open_for_dump(now, now + request.hold_s))
        for file, window in list(self.windows.items()):
            try:
                self._schedule_file(file, window, now)
            except Exception as exc:  # one file's trouble must never stop the loop
                self._degrade(file, exc)
        for request in requests:
            if request.refused is None and not self.capture.is_attached(request.file):
                request.refused = "the daemon could not attach the probes again (see its log)"
            request.done.set()

    def _schedule_file(self, file: tuple[int, int], window: FileWindow, now: float) -> None:
        assert self.capture is not None
        before = window.duty
        window.plan(self.probe_budget)
        if _differs(window.duty, before, by=0.5):
            pids = sorted(t.pid for t in self.traced.values() if t.file == file)
            log.info("pid %s: probes attached %s", ", ".join(map(str, pids)),
                     "all the time (full capture)" if window.duty >= 1.0 else
                     f"{100 * window.duty:.2g}% of the time, in windows of "
                     f"{self.config.window:g} s")
        change = window.step(now)
        if change is None:
            return
        if change:   # before probes go in again: is it still the file they map?
            self._check_probed_files([t for t in self.traced.values() if t.file == file])
            if file not in self.windows:
                return   # none of its processes is left
        users = [t for t in self.traced.values() if t.file == file]
        # The estimates' windows run from when the probes are all in place to just
        # before they start to go: placing and removing them takes time (~0.25 s to
        # remove), in which steps may go uncounted while CPU time is spent.
        for traced in users:
            self._read_counts(traced, attached=not change)
            if not change:
                self._close_estimate_window(traced)
        with self._bpf_lock:
            started = time.monotonic()
            if change:
                self.capture.resume(file)
            else:
                self.capture.pause(file)
            took = time.monotonic() - started
        log.debug("file %d:%d: probes %s in %.3f s", *file, "attached" if change else "detached",
                  took)
        if change:
            for traced in users:
                self._read_counts(traced, attached=False)
                traced.account.open_window(self._thread_times(traced))
        else:   # the probes stayed in place until now
            window.detach_took(took)
            for traced in users:
                traced.account.probes_stayed(took)   # the next tick sees them detached
        window.attached = change
        for traced in self.traced.values():
            if traced.file == file:
                traced.account.restart_rates()   # rates are measured within one window
                if change:                       # ... from its start
                    self._start_measuring(traced)

    def _close_estimate_window(self, traced: Traced) -> None:
        """The window's counts and CPU time join the estimate's ratio."""
        steps, cpu, own = traced.account.close_window(time.monotonic(),
                                                      self._thread_times(traced))
        log.debug("pid %d: the window saw %d steps in %.3f CPU s (%.3f without the probes): "
                  "%.0f steps per CPU s between windows", traced.pid, steps, cpu, own,
                  traced.account.estimate.steps_per_cpu_second())

    def _sleep_for(self, now: float) -> float:
        """Until the next tick, or sooner when a window is due to open or close."""
        due = next_switch(list(self.windows.values()))
        if due is None:
            return TICK_S
        return min(TICK_S, max(due - now, MIN_SLEEP_S))

    def _start_measuring(self, traced: Traced) -> None:
        """The probes were just attached: the rates of the window count from now."""
        if self.capture is None:
            return
        with self._bpf_lock:
            stats = self.capture.stats(traced.pid)
        if stats is not None:
            self._measure(traced, stats)

    def _count_faults(self, faults: Faults) -> None:
        """Count what the programs could not do since the last reading."""
        self.errors["bpf_read"] += faults.read_errors
        self.errors["bpf_records_full"] += faults.records_dropped   # read from memory

    def _cpu_time(self, traced: Traced) -> float | None:
        try:
            times = psutil.Process(traced.pid).cpu_times()
        except psutil.Error:
            traced.gone = True
            return None
        return times.user + times.system

    def _thread_times(self, traced: Traced) -> ThreadTimes | None:
        try:
            return thread_times(traced.pid)
        except ProcessNotFound:
            traced.gone = True
            return None

    def _measure(self, traced: Traced, stats: TargetStats) -> None:
        """Step and CPU rates over the last stretch with probes attached."""
        cpu = self._thread_times(traced)
        if cpu is None:
            return
        # now, not the tick's start: that came before the tick's scan
        account = traced.account
        if not account.measure(time.monotonic(), cpu, stats, self.config.window):
            return
        if _differs(account.overhead_full, traced.logged_overhead):   # (idle: said once)
            traced.logged_overhead = account.overhead_full
            log.debug("pid %d: %.0f steps/s, %.2f CPU s/s, %.2f us per captured step: full "
                      "capture would cost %.1f%%", traced.pid, account.step_rate,
                      account.cpu_rate, account.step_cost * 1e6, 100 * account.overhead_full)

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

    def _read_interval(self, traced: Traced) -> float:
        """Seconds until ``traced`` is read again: ``refresh_interval``, or longer where
        the reads of every traced process would cost more than ``read_budget``."""
        costs = {t.pid: t.read_cpu_s for t in list(self.traced.values()) if not t.gone}
        costs[traced.pid] = traced.read_cpu_s
        return read_intervals(costs, self.config.refresh_interval,
                              self.config.read_budget)[traced.pid]

    def _refresh(self, traced: Traced) -> None:
        cpu = time.thread_time()
        try:
            # Tasks are summarized as they are read, never all held at once.
            summarizer = Summarizer(self.config.top_sites, self.config.library_frames)
            with traced.lock:
                traced.collector.mem.limit(READ_DEADLINE_S)
                try:
                    snapshot = traced.collector.snapshot(details=False,
                                                         records=self._records(traced),
                                                         sink=summarizer.add, names=False,
                                                         parked=summarizer.add_parked)
                finally:   # nothing kept between reads; a big read's heap goes back
                    traced.collector.mem.limit(None)
                    traced.collector.forget(trim=summarizer.pending >= BIG_READ_TASKS)
            if self._unchanged(traced):   # else it was read from another process or program
                traced.summary = summarizer.finish(snapshot)
                self._note_truncated(traced, snapshot.truncated)
        except NoAsyncio:
            traced.summary = SnapshotSummary(read_at=time.time())
        except _GONE:
            traced.gone = True
        except (RemoteReadError, DecodeError, OSError) as exc:
            if self._unchanged(traced):   # (else the old program's addresses are stale)
                self.errors["read_limit" if isinstance(exc, ReadLimitExceeded) else "read"] += 1
                log.warning("pid %d: memory read failed: %s", traced.pid, exc)
        # A process whose read costs much is read less often: the reads of every
        # process stay within read_budget of one CPU.
        traced.read_cpu_s = time.thread_time() - cpu
        traced.next_read = time.monotonic() + self._read_interval(traced)

    def _note_truncated(self, traced: Traced, truncated: bool) -> None:
        """Count and say it when the last read left tasks out (more than MAX_TASKS)."""
        if truncated:
            self.errors["tasks_left_out"] += 1
            log.warning("pid %d: more than %d tasks: the rest were left out of the read",
                        traced.pid, traced.collector.max_tasks)

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
            account = traced.account
            views.append(ProcessView(
                pid=traced.pid, process=traced.candidate.name,
                python=traced.target.version_str, container=traced.candidate.container,
                capture=self._capture_kind(traced), summary=traced.summary,
                counts=account.estimate.counts, probe_hits=account.estimate.hits,
                capture_fraction=account.capture_fraction(traced.file is not None),
                attached_seconds=account.attached_s,
                overhead=(account.overhead(window.duty if window else 0.0)
                          + profile_overhead(self.profile_rate)),
                step_cost=account.step_cost))
        self.state = DaemonState(views, Counter(self.errors), self.last_scan,
                                 generation=self.state.generation + 1)

    def current_state(self) -> DaemonState:
        return self.state

    def dump(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer a dump request (see aiobpf.daemon.dumps)."""
        pid = request["pid"]
        fmt = request.get("format", "tree")
        traced = self.traced.get(pid)
        if traced is None or traced.gone:
            return {"fallback": f"process {pid} is not traced by this daemon"}
        if not self._unchanged(traced):
            return {"fallback": CHANGED.format(pid=pid)}
        if fmt not in FORMATS:
            return {"error": f"unknown format {fmt!r}", "exit_code": errors.EXIT_USAGE}
        notes: list[str] = []
        records = None
        if request.get("capture") == "bpf":
            asked = request.get("window")
            wait_s = _dump_window(asked)
            if isinstance(asked, (int, float)) and asked > wait_s:
                notes.append(f"the daemon watched steps for {wait_s:g} s (its longest), "
                             f"not {asked:g}")
            got = self._dump_records(traced, wait_s)
            if isinstance(got, str):
                return {"fallback": got}
            records = got
        elif request.get("capture") != "memory":
            records = self._records(traced)
        out: list[str] = []
        try:
            with translate_errors(pid), traced.lock:
                traced.collector.mem.limit(DUMP_DEADLINE_S)
                try:
                    snapshot = traced.collector.snapshot(details=fmt == "json",
                                                         records=records)
                finally:
                    traced.collector.mem.limit(None)
                    traced.collector.mem.clear()
            if not self._unchanged(traced):   # it changed while being read
                return {"fallback": CHANGED.format(pid=pid)}
            out.extend(render(snapshot, fmt))
        except errors.AiobpfError as exc:
            if not self._unchanged(traced):
                return {"fallback": CHANGED.format(pid=pid)}
            return {"output": "".join(out), "error": exc.message, "hint": exc.hint,
                    "exit_code": exc.exit_code, "notes": notes}
        return {"output": "".join(out), "notes": notes}

    def profile(self, request: dict[str, Any], stopped: Callable[[], bool]) -> dict[str, Any]:
        """Answer a profile request (see aiobpf.daemon.dumps): the continuous profile's
        samples of the next ``duration`` seconds, when it can serve what was asked."""
        pid, asked = request["pid"], request.get("profile")
        if not isinstance(asked, dict):
            return {"error": "bad request", "exit_code": errors.EXIT_USAGE}
        traced = self.traced.get(pid)
        why = profile_refusal(asked, self.config, self.profiles is not None)
        if why is None and (traced is None or traced.gone):
            why = f"process {pid} is not traced by this daemon"
        elif why is None and traced is not None and not self._unchanged(traced):
            why = CHANGED.format(pid=pid)
        profiles = self.profiles
        if why is not None or profiles is None:
            return {"fallback": why or "the daemon's continuous profiles are off"}
        tap = profiles.serve(pid, float(asked["duration"]), stopped)
        if tap is None:
            return {"fallback": f"the daemon does not profile process {pid} (yet)"}
        notes = [f"process {pid} exited"] if tap.gone else []
        return {"profile": tap.profile.document(), "notes": notes}

    def _dump_records(self, traced: Traced, wait_s: float) -> dict | str:
        """BPF records of ``traced`` taken over at least ``wait_s`` seconds of attached
        probes, as ``--capture bpf`` takes them: when its file's probes are off (between
        windows) or were attached only just now, the loop opens a window early (or holds
        the open one) as the budget allows, and the dump waits until ``wait_s`` after the
        attach.  The schedule closes the window as usual; its time counts as attached.
        Returns why not instead, in one line."""
        if self.capture is None:
            return self.capture_off
        file = traced.file
        if file is None:
            why = "; ".join(traced.attachment.notes) if traced.attachment else ""
            return f"the daemon placed no probes for process {traced.pid}" + (
                f" ({why})" if why else "")
        with self._bpf_lock:
            since = self.capture.attached_since(file)
        if since is None or time.monotonic() - since / 1e9 < wait_s:
            request = WindowRequest(file, wait_s + DUMP_HOLD_MARGIN_S)
            with self._requests_lock:
                self._requests.append(request)
            self._wake.set()
            if not request.done.wait(DUMP_ATTACH_WAIT_S):
                with self._requests_lock, contextlib.suppress(ValueError):
                    self._requests.remove(request)
                return (f"the daemon did not attach its probes within "
                        f"{DUMP_ATTACH_WAIT_S:g} s (it is stopping, or busy)")
            if request.refused is not None:
                return request.refused
            with self._bpf_lock:
                since = self.capture.attached_since(file) if self.capture else None
            if since is None:
                return "the daemon's probes were detached before the records were read"
            time.sleep(max(0.0, since / 1e9 + wait_s - time.monotonic()))
        records = self._records(traced)
        if records is None:
            return "the daemon's probes were detached before the records were read"
        return records


def profile_refusal(asked: dict[str, Any], config: Config, on: bool) -> str | None:
    """Why the daemon cannot serve the profile ``asked`` (mode, rate, duration), in one
    line; None when it can (``on``: its continuous profiles run)."""
    daemon_rate = config.profile_rate
    if not on:
        return ("the daemon's continuous profiles could not start (its log says why)"
                if config.profiles else
                "the daemon's continuous profiles are off (profiles = false)")
    if asked.get("mode") != "cpu":
        return (f"the daemon keeps CPU profiles only, not --mode "
                f"{bound(str(asked.get('mode')), 20)}")
    rate, duration = asked.get("rate"), asked.get("duration")
    if rate is not None and (not isinstance(rate, (int, float)) or rate != daemon_rate):
        return (f"the daemon samples at {daemon_rate:g} Hz (its profile_rate), not "
                f"{bound(str(rate), 20)} Hz (without --rate its samples serve)")
    if (isinstance(duration, bool) or not isinstance(duration, (int, float))
            or not 0 < duration <= PROFILE_MAX_S):
        return f"the daemon serves profiles of up to {PROFILE_MAX_S:g} s"
    return None


def _dump_window(asked: object) -> float:
    """How long a dump watches steps: its ``--window``, within [0, DUMP_WINDOW_MAX_S]."""
    if isinstance(asked, bool) or not isinstance(asked, (int, float)) or asked != asked:
        return 0.3   # a client that did not say: the CLI's default
    return min(max(float(asked), 0.0), DUMP_WINDOW_MAX_S)


def _differs(new: float, old: float | None, by: float = 0.1) -> bool:
    """Whether an estimate moved enough to be worth a log line (by this fraction of its
    value, or from nothing)."""
    return old is None or abs(new - old) > by * max(abs(old), 1e-6)


def _kind(exc: BaseException, default: str) -> str:
    """The ``aiobpf_errors_total`` kind of a BPF failure (bcc's bare Exceptions: ``default``)."""
    return exc.kind if isinstance(exc, CaptureUnavailable) else default


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (bcc's can span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def serve(daemon: Daemon, socket_path: Path | None) -> None:
    """Run ``daemon`` with its metrics endpoint (and dump socket) until stopped."""
    from aiobpf.daemon.dumps import DumpServer
    from aiobpf.daemon.metrics_server import start_metrics_server
    from aiobpf.daemon.web_config import load_web_config

    host, port = daemon.config.listen_address
    server = start_metrics_server(host, port, daemon.current_state,
                                  load_web_config(daemon.config.web_config))
    dumps = DumpServer(socket_path, daemon.dump, daemon.profile) if socket_path else None
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
