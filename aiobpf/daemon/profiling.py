"""Continuous CPU profiles of the traced processes, written as pprof files on a rotation.

Off by default (``profiles = false``).  When on, the profiler's program
(aiobpf.bpf.profile) samples every thread of every traced process on its CPU clock at
``profile_rate`` Hz, as ``aiobpf profile --mode cpu`` does; every ``profile_rotate``
seconds each process's samples since the last file are written to
``profile_dir/PID-START.pb.gz`` (pprof, the async stacks of ``aiobpf profile``), and
files older than ``profile_keep`` seconds are removed, so an operator can fetch the
last hour with ``go tool pprof`` or a Pyroscope uploader.  ``aiobpf profile PID`` asks
the daemon first (aiobpf.daemon.dumps): ``serve`` hands it the samples of the next
seconds it asks for, at the daemon's rate (a ``Tap`` on the process's samples).

A sample costs the traced thread one perf interrupt and the program's walk of its
frames (aiobpf.daemon.budget.cost.PROFILE_SAMPLE_S: at 19 Hz, 0.067 % of a busy
thread), taken from the overhead budget before the probes are planned.  Naming the
samples and finding their tasks reads each process's memory (its task list every
``REFRESH_S``), on this module's own thread, with collectors of its own.

The directory is the daemon's: created 0700, and refused (profiles off, said in the
log) when it is a symbolic link, is not owned by the daemon's user, or is open to
others; files are created 0600 without following links, under names of digits only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiobpf.bpf.profile import CpuProfiler, ProfilerUnavailable, RawSample
from aiobpf.collector.cpu_samples import GONE, ProcessSamples
from aiobpf.collector.memory import RemoteReadError
from aiobpf.collector.objects import DecodeError
from aiobpf.collector.snapshot import Collector
from aiobpf.collector.target import Target
from aiobpf.exporters.profile import pprof
from aiobpf.exporters.profile.profile import Profile
from aiobpf.exporters.profile.stacks import batch_stacks

log = logging.getLogger("aiobpf")

REFRESH_S = 5.0           # the task list of a profiled process is read this often
POLL_MS = 100
MAX_PENDING = 100_000     # samples of one process waiting for their tasks (then dropped)
FILE_NAME = re.compile(r"(\d+)-(\d+)\.pb\.gz")
TAP_MARGIN_NS = 20_000_000   # a sample is in the ring this soon after it was taken
TAP_GRACE_S = 2 * REFRESH_S + 5.0   # a tap not complete this long after its end gives up


class ProfilesUnavailable(Exception):
    """Continuous profiles cannot run (the message says why)."""


def own_directory(path: Path) -> int:
    """An O_DIRECTORY descriptor of ``path``, made 0700 if missing; refused when it is a
    link, not owned by this user, or open to others."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, mode=0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ProfilesUnavailable(f"{path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        os.close(fd)
        raise ProfilesUnavailable(f"{path}: must be owned by uid {os.geteuid()} and closed "
                                  f"to others (mode 0700)")
    return fd


@dataclass
class Tap:
    """A request's share of one process's samples: those taken from ``start_ns`` to
    ``end_ns`` (CLOCK_MONOTONIC, as the program stamps them), complete (``done``) once
    every sample of that span has been attributed, or the process is gone (``gone``)."""

    start_ns: int
    end_ns: int
    profile: Profile
    done: threading.Event = field(default_factory=threading.Event)
    gone: bool = False

    def wants(self, time_ns: int) -> bool:
        return self.start_ns <= time_ns <= self.end_ns


@dataclass
class _Profiled:
    pid: int
    collector: Collector
    samples: ProcessSamples
    profile: Profile
    started: float = field(default_factory=time.time)
    refreshed: float = 0.0
    taps: list[Tap] = field(default_factory=list)

    def release_taps(self) -> None:
        """The process is no longer profiled: its requests get what they have."""
        for tap in self.taps:
            tap.gone = True
            tap.done.set()
        self.taps.clear()


class ContinuousProfiles:
    """The profiler of a daemon: ``follow`` and ``forget`` processes as they are traced."""

    def __init__(self, rate_hz: float, directory: Path, rotate_s: float, keep_s: float) -> None:
        self.rate_hz, self.rotate_s, self.keep_s = rate_hz, rotate_s, keep_s
        self.directory = directory
        self._dir_fd = own_directory(directory)
        self._lock = threading.Lock()
        self._processes: dict[int, _Profiled] = {}
        self._stop = threading.Event()
        self.written = 0
        self._polled_ns = 0   # samples taken before this were read from the ring
        try:
            self.profiler = CpuProfiler(self._received)
        except ProfilerUnavailable as exc:
            os.close(self._dir_fd)
            raise ProfilesUnavailable(str(exc)) from None
        self._thread = threading.Thread(target=self._run, name="aiobpf-profiles", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def follow(self, target: Target) -> None:
        """Profile ``target`` from now on (with a collector of its own)."""
        collector = Collector(target)
        process = _Profiled(target.pid, collector,
                            ProcessSamples(collector, self.profiler, self.rate_hz, MAX_PENDING),
                            Profile(target.pid, "cpu", self.rate_hz))
        with self._lock:
            self._processes[target.pid] = process

    def forget(self, pid: int) -> None:
        """Stop profiling ``pid``; its samples waiting count, under the tasks of the
        last read (requests get them)."""
        with self._lock:
            process = self._processes.pop(pid, None)
            if process is None:
                return
            with contextlib.suppress(Exception):
                self.profiler.poll(0)
                self._attribute(process, read=False)
            self._stop_profiling(process)

    def _stop_profiling(self, process: _Profiled) -> None:
        process.release_taps()
        with contextlib.suppress(Exception):
            self.profiler.forget(process.pid)
        process.collector.close()

    def serve(self, pid: int, duration_s: float, stopped: Callable[[], bool]
              ) -> Tap | None:
        """The samples of ``pid`` over the next ``duration_s`` seconds (fewer once
        ``stopped()``), as async stacks; None when ``pid`` is not profiled."""
        now = time.monotonic_ns()
        tap = Tap(now, now + int(duration_s * 1e9), Profile(pid, "cpu", self.rate_hz))
        with self._lock:
            process = self._processes.get(pid)
            if process is None:
                return None
            process.taps.append(tap)
        give_up = time.monotonic() + duration_s + TAP_GRACE_S
        while not tap.done.wait(0.1):
            if stopped() or self._stop.is_set():
                with self._lock:
                    tap.end_ns = min(tap.end_ns, time.monotonic_ns())
            if time.monotonic() > give_up:
                with self._lock, contextlib.suppress(ValueError):
                    process.taps.remove(tap)
                break
        tap.profile.duration_s = (min(tap.end_ns, time.monotonic_ns()) - tap.start_ns) / 1e9
        return tap

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        with self._lock:
            for pid in list(self._processes):
                self._write(self._processes[pid], time.time())
        for pid in list(self._processes):
            self.forget(pid)
        self.profiler.close()
        os.close(self._dir_fd)

    # -- the profiler's thread ----------------------------------------------------------
    def _received(self, raw: RawSample) -> None:
        process = self._processes.get(raw.pid)
        if process is not None:
            process.samples.receive(raw)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._polled_ns = time.monotonic_ns() - TAP_MARGIN_NS   # samples before: here
                self.profiler.poll(0)
                now = time.time()
                for process in list(self._processes.values()):
                    try:
                        self._tend(process, now)
                    except Exception as exc:  # one process must never stop the others
                        gone = isinstance(exc, GONE)
                        if not gone:
                            log.warning("pid %d: continuous profile stopped: %s",
                                        process.pid, exc)
                        self._processes.pop(process.pid, None)
                        self._stop_profiling(process)
                self._prune(now)
            self._stop.wait(POLL_MS / 1000)

    def _tend(self, process: _Profiled, now: float) -> None:
        """Read its task list when due (following its threads), attribute the samples
        waiting, and write its file when the rotation is due (a request's samples are
        attributed as soon as its span ends)."""
        tap_due = any(tap.end_ns <= self._polled_ns for tap in process.taps)
        if tap_due or now - process.refreshed >= min(REFRESH_S, self.rotate_s):
            process.refreshed = now
            try:
                self._attribute(process)
            except GONE:
                raise
            except (RemoteReadError, DecodeError) as exc:   # torn: the samples wait
                log.debug("pid %d: the profile's read of the tasks failed: %s",
                          process.pid, exc)
        if now - process.started >= self.rotate_s:
            self._write(process, now)

    def _attribute(self, process: _Profiled, read: bool = True) -> None:
        """The samples waiting, under their tasks (``read``: read anew), in the profile
        and the requests that want them; a request whose span ended gets its answer."""
        batch = process.samples.attribute(read)
        for sample, stack in zip(batch.samples, batch_stacks(batch), strict=True):
            process.profile.add(stack)
            process.profile.samples += 1
            for tap in process.taps:
                if tap.wants(sample.time_ns):
                    tap.profile.add(stack)
                    tap.profile.samples += 1
        for tap in [tap for tap in process.taps if tap.end_ns <= self._polled_ns]:
            process.taps.remove(tap)
            tap.done.set()
        if process.samples.gone is not None:
            raise process.samples.gone   # (its samples taken: it is dropped)

    def _write(self, process: _Profiled, now: float) -> None:
        profile, process.profile = process.profile, Profile(process.pid, "cpu", self.rate_hz)
        profile.duration_s = now - process.started
        name = f"{process.pid}-{int(process.started)}.pb.gz"
        process.started = now
        if not profile.stacks:
            return
        temporary = f".{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                     0o600, dir_fd=self._dir_fd)
        with os.fdopen(fd, "wb") as out:
            out.write(pprof.render(profile))
        os.rename(temporary, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        self.written += 1

    def _prune(self, now: float) -> None:
        """Remove the files older than ``keep_s`` (only names this module writes)."""
        with os.scandir(self._dir_fd) as entries:
            for entry in entries:
                found = FILE_NAME.fullmatch(entry.name)
                if found and int(found.group(2)) < now - self.keep_s - self.rotate_s:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=self._dir_fd)
