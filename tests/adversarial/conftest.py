"""Attacks on a root daemon from an unprivileged user of the same host.

Each test here starts a real ``aiobpf daemon`` (root, real BPF), lets a process of
``hostile_user`` (a system user created for the session, removed after) do something
a hostile or faulty target could do, and asserts that the attack fails while the daemon
stays healthy: it keeps discovering new processes, its last-scan timestamp advances,
and SIGTERM stops it within 3 s.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import run_target
from tests.integration.daemon_proc import DaemonProcess
from tests.pythons import by_label

HOSTILE = f"aiobpf-h{os.getpid()}"   # one per session: sessions may run side by side
STOP_WITHIN_S = 3.0


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@pytest.fixture(scope="session")
def hostile_user() -> Iterator[User]:
    """An unprivileged system user of this session's own, removed at its end."""
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                    "/usr/sbin/nologin", HOSTILE], check=True)
    try:
        entry = pwd.getpwnam(HOSTILE)
        yield User(entry.pw_name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", HOSTILE], check=False)


def assert_healthy(daemon: DaemonProcess, name: str | None = None) -> None:
    """The daemon still works after an attack: its loop advances and a process that
    starts now is discovered and traced within 10 s.  It runs ``depth.py`` (under the
    file ``name``, when given: a name the daemon's select pattern accepts)."""
    daemon.assert_fresh()
    with run_target(by_label("sid-3.14"), "depth.py", "3", "2", name=name) as fresh:
        daemon.wait_traced(fresh.pid, timeout=10.0)


def stop_in_time(daemon: DaemonProcess) -> None:
    took = daemon.stop_within(STOP_WITHIN_S)
    assert took < STOP_WITHIN_S
