"""A process's identity (PID, start time, executable, exec generation) and what a
discovery scan does when it changes: the pure parts, with /proc stood in for, and the
/proc readers against real processes of this user."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from aiobpf.collector import procfs
from aiobpf.daemon import discovery
from aiobpf.daemon.config import Selection
from aiobpf.daemon.discovery import Candidate, Discovery, Identity

A = Identity(100, started=5000, exe=(1, 11), generation=b"first program")


def entry(key: int, value: int) -> bytes:
    return key.to_bytes(8, "little") + value.to_bytes(8, "little")


def test_the_auxiliary_vector_is_read_up_to_its_end() -> None:
    auxv = entry(6, 4096) + entry(procfs.AT_RANDOM, 0x7FFC0000) + entry(procfs.AT_NULL, 0)
    assert procfs.auxv_value(auxv, procfs.AT_RANDOM) == 0x7FFC0000
    assert procfs.auxv_value(auxv, 31) is None
    # nothing past AT_NULL, nothing from a torn last entry, nothing from an empty vector
    assert procfs.auxv_value(entry(0, 0) + entry(procfs.AT_RANDOM, 1), procfs.AT_RANDOM) is None
    assert procfs.auxv_value(entry(6, 1) + b"\x19" * 9, procfs.AT_RANDOM) is None
    assert procfs.auxv_value(b"", procfs.AT_RANDOM) is None


@pytest.mark.parametrize("changed", [
    Identity(100, 5001, (1, 11), b"first program"),    # another process, same PID
    Identity(100, 5000, (1, 12), b"first program"),    # exec of another executable
    Identity(100, 5000, (1, 11), b"second program"),   # exec of the same executable
])
def test_any_change_is_another_identity(changed: Identity) -> None:
    assert changed != A
    assert Identity(100, 5000, (1, 11), b"first program") == A


@contextmanager
def child(code: str) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_start_time_survives_a_hostile_process_name() -> None:
    """The name in /proc/PID/stat is the process's to choose: spaces and parentheses
    must not shift the fields."""
    code = ("import time\nopen('/proc/self/comm', 'w').write(') 1 2 (3 4')\n"
            "print('ready', flush=True)\ntime.sleep(30)")
    with child(code) as proc:
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == ") 1 2 (3 4"
        ticks = procfs.start_time(proc.pid)
        boot = psutil.boot_time()
        assert abs(boot + ticks / os.sysconf("SC_CLK_TCK") - psutil.Process(proc.pid)
                   .create_time()) < 0.05


def test_the_exec_generation_changes_at_an_exec_of_the_same_executable() -> None:
    """Same PID, start time and executable, with address randomization off: only the
    generation tells the programs apart."""
    then = ("import time\nprint('ready', flush=True)\ntime.sleep(30)")
    first = ("import os, sys\nprint('ready', flush=True)\nsys.stdin.readline()\n"
             f"os.execv(sys.executable, [sys.executable, '-c', {then!r}])")
    proc = subprocess.Popen(["setarch", "-R", sys.executable, "-c", first],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        before = Identity.of(proc.pid)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ready"
        after = Identity.of(proc.pid)
        assert before is not None and after is not None
        assert (before.pid, before.started, before.exe) == (after.pid, after.started, after.exe)
        assert len(before.generation) == len(after.generation) == 24
        assert before.generation != after.generation
        assert after == Identity.of(proc.pid)   # and it stays put between execs
    finally:
        proc.kill()
        proc.wait()


def test_a_gone_process_has_no_identity() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert Identity.of(proc.pid) is None


def test_the_identity_check_is_cheap() -> None:
    """Every Python of the host has its identity checked at every scan (1 s)."""
    pid = os.getpid()
    Identity.of(pid)
    started = time.perf_counter()
    for _ in range(200):
        Identity.of(pid)
    each = (time.perf_counter() - started) / 200
    print(f"Identity.of: {each * 1e6:.1f} us")
    assert each < 1e-3


# -- a scan, with /proc stood in for --------------------------------------------------
class FakeHost:
    """PIDs, identities and what maps a Python, as a scan sees them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ids: dict[int, Identity] = {}
        self.python: set[int] = set()
        self.examined: list[int] = []
        self.identity_reads = 0
        monkeypatch.setattr(discovery.psutil, "pids", lambda: list(self.ids))
        monkeypatch.setattr(discovery.Identity, "of", staticmethod(self._identity))
        monkeypatch.setattr(discovery, "_exe_of", lambda pid: self.ids[pid].exe)
        monkeypatch.setattr(discovery, "maps_python", lambda pid: pid in self.python)
        monkeypatch.setattr(Discovery, "_examine", lambda _found, identity: self._examine(identity))

    def _identity(self, pid: int) -> Identity | None:
        self.identity_reads += 1
        return self.ids.get(pid)

    def _examine(self, identity: Identity) -> Candidate | None:
        self.examined.append(identity.pid)
        if identity.pid not in self.python or identity.generation == b"unselected":
            return None
        return Candidate(identity, "python3", "python3 app.py", 1000, "")


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    return FakeHost(monkeypatch)


def scan(found: Discovery) -> tuple[list[int], list[int]]:
    fresh, gone = found.scan(now=0.0)
    return [c.identity.pid for c in fresh], gone


def test_a_traced_process_that_execs_the_same_executable_is_new(host: FakeHost) -> None:
    host.ids[100], host.python = A, {100}
    found = Discovery(Selection())
    assert scan(found) == ([100], [])
    found.settle(100, "candidate")
    assert scan(found) == ([], [])
    host.ids[100] = Identity(100, 5000, (1, 11), b"second program")
    assert scan(found) == ([100], [100])   # dropped, and looked at as new
    found.settle(100, "candidate")
    assert scan(found) == ([], [])


def test_a_traced_pid_given_to_a_new_process_is_new(host: FakeHost) -> None:
    host.ids[100], host.python = A, {100}
    found = Discovery(Selection())
    scan(found)
    found.settle(100, "candidate")
    host.ids[100] = Identity(100, 9000, (1, 11), b"first program")
    assert scan(found) == ([100], [100])


def test_a_passed_over_python_is_looked_at_again_when_it_changes(host: FakeHost) -> None:
    """A Python whose command line was not selected: a new process at its PID (or an
    exec) with the same executable may be selected."""
    host.ids[100], host.python = Identity(100, 5000, (1, 11), b"unselected"), {100}
    found = Discovery(Selection())
    assert scan(found) == ([], [])
    assert scan(found) == ([], [])
    assert host.examined == [100]
    host.ids[100] = Identity(100, 9000, (1, 11), b"selected")
    assert scan(found) == ([100], [100])


def test_a_process_without_python_costs_one_stat_per_scan(host: FakeHost) -> None:
    """No Python mapped: only an exec of another executable can change that."""
    host.ids[7] = Identity(7, 10, (0, 0), b"")           # a kernel thread
    host.ids[200] = Identity(200, 20, (1, 99), b"sh")
    found = Discovery(Selection())
    scan(found)
    reads = host.identity_reads
    host.ids[200] = Identity(200, 21, (1, 99), b"sh again")   # same executable: no Python
    for _ in range(3):
        assert scan(found) == ([], [])
    assert host.identity_reads == reads
    host.ids[200], host.python = Identity(200, 22, (1, 11), b"python now"), {200}
    assert scan(found) == ([200], [200])


def test_a_process_that_cannot_be_examined_does_not_stop_the_scan(host: FakeHost,
                                                                 monkeypatch) -> None:
    host.ids[100], host.ids[101], host.python = A, Identity(101, 1, (1, 11), b"x"), {100, 101}

    def examine(_found: Discovery, identity: Identity) -> Candidate | None:
        if identity.pid == 100:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return Candidate(identity, "python3", "python3 app.py", 1000, "")

    monkeypatch.setattr(Discovery, "_examine", examine)
    found = Discovery(Selection())
    assert scan(found) == ([101], [])
    assert found.failed == [(100, "UnicodeDecodeError")]
    assert scan(found) == ([101], []) and found.failed == []   # (101 still "waiting")
