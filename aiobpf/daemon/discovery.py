"""Find the processes to trace: every CPython with asyncio on the host and in its
containers, as they start, exec and exit.

A scan lists /proc (through psutil) and looks closer only at what is new or has
changed: a process never seen, one whose executable changed (it exec'd), or a
Python that has not imported asyncio yet (looked at again with growing pauses).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from aiobpf.daemon.config import Selection
from aiobpf.safe_text import from_bytes, valid

# What makes a process worth a closer look: an interpreter or asyncio module mapped.
_PYTHON_MAPPED = re.compile(rb"(?:python3\.\d+|_asyncio\.)")
# Container ids in /proc/PID/cgroup (docker, containerd, cri-o, podman): 64 hex digits.
_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")
RECHECK_MAX_S = 30.0


@dataclass(frozen=True)
class Identity:
    """A process as the daemon knows it; a new identity after an exec."""

    pid: int
    started: float        # psutil create_time
    exe: tuple[int, int]  # (device, inode) of /proc/PID/exe

    @staticmethod
    def of(pid: int) -> Identity | None:
        try:
            started = psutil.Process(pid).create_time()
            st = os.stat(f"/proc/{pid}/exe")
        except (psutil.Error, OSError):
            return None
        return Identity(pid, started, (st.st_dev, st.st_ino))


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

    def scan(self, now: float | None = None) -> tuple[list[Candidate], list[int]]:
        """(processes to look at closely now, PIDs that exited or exec'd since the last
        scan).  Look-closer verdicts are reported back with ``settle``."""
        now = time.monotonic() if now is None else now
        self.passed_over = []
        pids = set(psutil.pids()) if self.only is None else {
            p for p in self.only if psutil.pid_exists(p)}
        pids.discard(self._self)
        gone = [pid for pid in self._seen if pid not in pids]
        for pid in gone:
            del self._seen[pid]
        fresh: list[Candidate] = []
        for pid in pids:
            seen = self._seen.get(pid)
            if (seen is not None and seen.verdict == "ignored" and self.only is None
                    and _exe_of(pid) == seen.identity.exe):
                continue  # the cheap test for an exec: the executable's identity
            identity = Identity.of(pid)
            if identity is None:
                continue
            if seen is not None and seen.identity != identity:
                gone.append(pid)              # it exec'd: whatever it was is over
                seen = None
            if seen is not None and (seen.verdict == "candidate" or now < seen.next_check):
                continue
            if seen is not None and seen.verdict == "ignored":
                continue
            candidate = self._examine(identity)
            if candidate is None:
                self._seen[pid] = _Seen(identity, "ignored")
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


def _exe_of(pid: int) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


