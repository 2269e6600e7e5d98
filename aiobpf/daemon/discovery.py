"""Find the processes to trace: every CPython with asyncio on the host and in its
containers, as they start, exec and exit.

A scan lists /proc (through psutil) and looks closer only at what is new or has
changed: a process never seen, one that is not the process or the program it was
(see ``Identity``), or a Python that has not imported asyncio yet (looked at again
with growing pauses).  Every process that maps a Python has its whole identity
checked at every scan (about 20 us each); one that maps none, only its executable
(a few us): nothing short of running another executable makes it a Python.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from aiobpf.collector import procfs
from aiobpf.daemon.config import Selection
from aiobpf.safe_text import from_bytes, valid

# What makes a process worth a closer look: an interpreter or asyncio module mapped.
_PYTHON_MAPPED = re.compile(rb"(?:python3\.\d+|_asyncio\.)")
# Container ids in /proc/PID/cgroup (docker, containerd, cri-o, podman): 64 hex digits.
_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")
RECHECK_MAX_S = 30.0


@dataclass(frozen=True)
class Identity:
    """Who a process is, beyond its PID (which the kernel gives out again): when it
    started (a process given a used PID starts later), its executable's (device, inode)
    and its exec generation (which changes at every exec, of the same executable too:
    ``procfs.exec_generation``).  Any difference: another process, or another program in
    the same one; whatever was known of the old one no longer holds."""

    pid: int
    started: int             # clock ticks since boot
    exe: tuple[int, int]     # (device, inode) of /proc/PID/exe; (0, 0): none (kernel thread)
    generation: bytes = b""

    @staticmethod
    def of(pid: int) -> Identity | None:
        """``pid``'s identity now; None when it is gone."""
        try:
            started = procfs.start_time(pid)
            exe = _exe_of(pid)
            generation = procfs.exec_generation(pid)
        except (procfs.ProcessNotFound, OSError):
            return None
        return Identity(pid, started, exe, generation)


@dataclass
class Candidate:
    """A process that passed the selection and maps a Python interpreter."""

    identity: Identity
    name: str
    cmdline: str
    uid: int
    container: str


def container_of(pid: int) -> str:
    """The container id of ``pid`` from its cgroup, "" for a process of the host: 12 hex
    digits (a cgroup path may hold any bytes; only a run of 64 hex digits is taken)."""
    try:
        text = from_bytes(Path(f"/proc/{pid}/cgroup").read_bytes())
    except OSError:
        return ""
    found = _CONTAINER_ID.findall(text)
    return found[-1][:12] if found else ""


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


def maps_python(pid: int) -> bool:
    try:
        return bool(_PYTHON_MAPPED.search(Path(f"/proc/{pid}/maps").read_bytes()))
    except OSError:
        return False


@dataclass
class _Seen:
    identity: Identity
    verdict: str           # candidate | ignored | waiting (a Python without asyncio yet)
    python: bool = True    # maps a Python (False: only another executable can change that)
    next_check: float = 0.0
    pause: float = 1.0


class Discovery:
    """Remembers what each PID turned out to be, so that a scan is cheap."""

    def __init__(self, selection: Selection, only: Iterable[int] | None = None) -> None:
        self.selection = selection
        self.only = set(only) if only is not None else None
        self._seen: dict[int, _Seen] = {}
        self._self = os.getpid()
        self.passed_over: list[int] = []   # PIDs the last scan found no Python in, or unselected
        self.failed: list[tuple[int, str]] = []   # (PID, error) the last scan could not examine

    def scan(self, now: float | None = None) -> tuple[list[Candidate], list[int]]:
        """(processes to look at closely now, PIDs whose process exited, exec'd or was
        replaced by a new one since the last scan: whatever was known of them is over).
        A PID can be in both.  Look-closer verdicts are reported back with ``settle``."""
        now = time.monotonic() if now is None else now
        self.passed_over, self.failed = [], []
        pids = set(psutil.pids()) if self.only is None else {
            p for p in self.only if psutil.pid_exists(p)}
        pids.discard(self._self)
        gone = [pid for pid in self._seen if pid not in pids]
        for pid in gone:
            del self._seen[pid]
        fresh: list[Candidate] = []
        for pid in pids:
            seen = self._seen.get(pid)
            if (seen is not None and not seen.python and self.only is None
                    and _exe_of(pid) == seen.identity.exe):
                continue  # no Python in it, and the same executable: still none
            identity = Identity.of(pid)
            if identity is None:
                continue
            if seen is not None and seen.identity != identity:
                gone.append(pid)              # another process or program: start afresh
                del self._seen[pid]
                seen = None
            if seen is not None and (seen.verdict != "waiting" or now < seen.next_check):
                continue
            try:
                candidate = self._examine(identity)
            except Exception as exc:  # one odd process must not stop the scan of the others
                self.failed.append((pid, type(exc).__name__))
                candidate = None
            if candidate is None:
                self._seen[pid] = _Seen(identity, "ignored", python=maps_python(pid))
                self.passed_over.append(pid)
                continue
            entry = seen or _Seen(identity, "waiting")
            self._seen[pid] = entry
            fresh.append(candidate)
        return fresh, gone

    def settle(self, pid: int, verdict: str, now: float | None = None) -> None:
        """What a closer look found: "candidate" (traced), "waiting" (a Python without
        asyncio yet: look again later), or "ignored"."""
        seen = self._seen.get(pid)
        if seen is None:
            return
        now = time.monotonic() if now is None else now
        seen.verdict = verdict
        if verdict == "waiting":
            seen.next_check = now + seen.pause
            seen.pause = min(seen.pause * 2, RECHECK_MAX_S)

    def forget(self, pid: int) -> None:
        """Look at ``pid`` afresh at the next scan."""
        self._seen.pop(pid, None)

    def _examine(self, identity: Identity) -> Candidate | None:
        pid = identity.pid
        if not maps_python(pid):
            return None
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                # psutil keeps bytes that are not UTF-8 as lone surrogates: made valid
                # here, escaped where shown (labels, logs).
                cmdline = valid(" ".join(proc.cmdline()))
                uid = proc.uids().real
                name = valid(proc.name())
        except psutil.Error:
            return None
        container = container_of(pid)
        if not self.selection.accepts(cmdline, uid, _user_name(uid), container):
            return None
        return Candidate(identity, name, cmdline, uid, container)


def _exe_of(pid: int) -> tuple[int, int]:
    """(device, inode) of ``pid``'s executable; (0, 0) when it has none (a kernel
    thread, a zombie)."""
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return (0, 0)
    return (st.st_dev, st.st_ino)
