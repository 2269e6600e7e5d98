"""A traced process that becomes another program under the same PID: it execs the same
interpreter into another asyncio program, or it exits and a new process of the same
executable is given its PID.  Either way the daemon must drop what it knew (layout,
probes' settings, records, counters) and trace the new program as new, within seconds:
metrics, dumps and windowed probes follow the new program, never the old one.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aiobpf.daemon import dumps
from tests.adversarial.at_pid import PID_UNAVAILABLE
from tests.adversarial.conftest import User, assert_healthy, stop_in_time
from tests.conftest import (
    READY_TIMEOUT,
    TARGETS,
    RunningTarget,
    _as_user,
    _install,
    _started,
    aiobpf,
    note_used,
    require,
    stop,
)
from tests.integration.daemon_proc import DaemonProcess, daemon_uprobes, run_daemon
from tests.pythons import Python, by_label, pyenv_root

SELECT = r" (/home/user|" + re.escape(str(TARGETS)) + r")/(depth|reexec)\.py"
FIRST, SECOND = 3, 8           # waiting tasks before and after; pending: + main (+ 2 busy)
NOTICED_WITHIN_S = 6.0         # a scan every second, a few for a busy 2-core machine
REPO = Path(__file__).resolve().parents[2]

# The matrix's Debian and sid interpreters are non-PIE executables (ELF type EXEC): the
# new program's interpreter lies at the very addresses of the old one.  pyenv's builds
# are PIE (and load libpython): everything moves at an exec.
NON_PIE, PIE = "sid-3.13", "pyenv-3.12.1"

# pyenv may live under a home only its owner can enter (root's: mode 0700): give the
# hostile user its own mount namespace where that home is an empty directory but for
# the pyenv tree.
_PYENV_FOR_USER = r"""
set -e
tree=$1 home=$2 uid=$3 gid=$4
shift 4
held=$(mktemp -d)
mount --bind "$tree" "$held"
mount -t tmpfs -o mode=0755,size=1m aiobpf-test "$home"
mkdir -p "$tree"
mount --move "$held" "$tree"
rmdir "$held"
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"
"""


def _argv_as(user: User, python: Python, *args: str) -> list[str]:
    argv = python.argv(*args)
    tree = pyenv_root()
    if python.root is None and tree is not None and python.executable.startswith(f"{tree}/"):
        home = tree.parent
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                _PYENV_FOR_USER, "sh", str(tree), str(home), str(user.uid), str(user.gid),
                *argv]
    return _as_user(user.name, argv)


def _wait_ready(target: RunningTarget, what: str) -> str:
    assert target.proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        line = target.proc.stdout.readline()
        if line.startswith("READY"):
            return line.strip()
        if not line:
            break
    err = target.proc.stderr.read() if target.proc.stderr else ""
    pytest.fail(f"{target.python.label} {what} did not get ready: {err[-2000:]}")


@contextmanager
def hostile_target(user: User, python: Python, *args: str, at_pid: int | None = None,
                   name: str | None = None) -> Iterator[RunningTarget]:
    """``reexec.py ARGS`` under ``python`` as ``user`` (with PID ``at_pid``, under another
    file ``name`` in a chroot, if given), started and waited for like
    ``tests.conftest.run_target``."""
    require(python)
    script = _install(python, TARGETS / "reexec.py", name)
    argv = _argv_as(user, python, "-u", script, *args)
    if at_pid is not None:
        argv = [sys.executable, "-m", "tests.adversarial.at_pid", str(at_pid), *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=REPO)
    _started.append(proc)
    target = RunningTarget(python, proc, script)
    try:
        target.ready_line = _wait_ready(target, "reexec.py")
        note_used(python)
        yield target
    finally:
        stop(proc)
        if proc.returncode == PID_UNAVAILABLE:
            pytest.fail(f"PID {at_pid} was taken before the test could have it")


def _pid_of(target: RunningTarget) -> int:
    """The target's own PID (with ``at_pid``, the Popen is its parent)."""
    out = subprocess.run(["pgrep", "-s", str(target.proc.pid), "-f", "reexec.py"],
                         capture_output=True, text=True, check=False).stdout.split()
    pids = [int(p) for p in out if int(p) != target.proc.pid]
    assert len(pids) == 1, f"reexec.py processes in the session: {out}"
    return pids[0]


def wait_for(what: str, check: Callable[[], bool], daemon: DaemonProcess,
             timeout: float = NOTICED_WITHIN_S) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    pytest.fail(f"{what} not within {timeout} s; the daemon's log ends:\n"
                f"{daemon.log.read_text()[-3000:]}")


def pending(daemon: DaemonProcess, pid: int) -> float | None:
    return daemon.value("aiobpf_tasks_pending", f'pid="{pid}"')


def daemon_tree(daemon: DaemonProcess, pid: int) -> str:
    """The daemon's own answer (no fallback to a reading of the CLI's)."""
    reply = dumps.request(daemon.socket, {"pid": pid, "format": "tree"})
    if reply is None or "error" in reply or "fallback" in reply:
        return f"(no answer from the daemon: {reply})"
    return str(reply.get("output", ""))


@pytest.mark.parametrize("label", [NON_PIE, PIE])
def test_an_exec_into_another_program_is_traced_as_new(tmp_path: Path, hostile_user: User,
                                                        label: str) -> None:
    """A busy target of the hostile user, captured in windows (1% budget), execs the same
    interpreter into another asyncio program while its probes are off.  The daemon sees
    the new program: its pending tasks, its tree through the socket and the CLI, and its
    probes come back (a fresh window) and count its steps."""
    python = by_label(label)
    with (run_daemon(tmp_path, select=SELECT, budget=0.01) as daemon,
          hostile_target(hostile_user, python, str(FIRST), str(SECOND), "busy") as target):
        pid = target.pid
        daemon.wait_traced(pid, timeout=15)
        wait_for("the first program's pending tasks",
                 lambda: pending(daemon, pid) == FIRST + 3, daemon)
        wait_for("a pause between windows (probes off)",
                 lambda: not daemon_uprobes(daemon.proc.pid), daemon, timeout=15)
        target.proc.send_signal(10)   # SIGUSR1: exec
        assert _wait_ready(target, "the exec'd program") == "READY second"

        took = wait_for("the new program's pending tasks",
                        lambda: pending(daemon, pid) == SECOND + 3, daemon)
        print(f"{label}: the new program's tasks counted within {took:.1f} s")
        wait_for("probes placed for the new program",
                 lambda: bool(daemon_uprobes(daemon.proc.pid)), daemon)
        wait_for("the new program's steps counted",
                 lambda: (daemon.value("aiobpf_probe_hits_total", f'pid="{pid}"') or 0) > 0,
                 daemon)
        assert len(daemon.series("aiobpf_process_info", pid)) == 1
        tree = daemon_tree(daemon, pid)
        assert "second-7" in tree and "first-" not in tree, tree
        cli = aiobpf("pstree", str(pid), socket=str(daemon.socket))
        assert cli.returncode == 0, cli.stderr
        assert "second_inner" in cli.stdout and "first_waiter" not in cli.stdout
        assert_healthy(daemon)
        stop_in_time(daemon)


def test_a_reused_pid_is_traced_as_a_new_process(tmp_path: Path, hostile_user: User) -> None:
    """The hostile user's traced process exits and a new one of the same executable (and
    user) is given its PID at once.  The daemon traces the new process: its pending
    tasks, one process_info series, and a dump of the new one."""
    python = by_label("sid-3.14")
    with run_daemon(tmp_path, select=SELECT) as daemon:
        with hostile_target(hostile_user, python, str(FIRST), "0") as old:
            pid = old.pid
            daemon.wait_traced(pid, timeout=15)
            wait_for("the old process's pending tasks",
                     lambda: pending(daemon, pid) == FIRST + 1, daemon)
        assert old.proc.returncode is not None   # gone and reaped: its PID is free
        with hostile_target(hostile_user, python, str(SECOND), "0", at_pid=pid) as new:
            assert _pid_of(new) == pid
            took = wait_for("the new process's pending tasks",
                            lambda: pending(daemon, pid) == SECOND + 1, daemon)
            print(f"the reused PID was noticed within {took:.1f} s")
            assert len(daemon.series("aiobpf_process_info", pid)) == 1
            tree = daemon_tree(daemon, pid)
            assert "first-7" in tree, tree
            assert_healthy(daemon)
        stop_in_time(daemon)



def test_a_reused_pid_of_a_passed_over_process_is_looked_at(tmp_path: Path,
                                                             hostile_user: User) -> None:
    """A process the daemon passed over (its command line is not selected) exits, and a
    selected process of the same executable is given its PID: the daemon looks at the
    new process and traces it."""
    python = by_label("sid-3.14")
    with run_daemon(tmp_path, select=SELECT) as daemon:
        with hostile_target(hostile_user, python, str(FIRST), "0",
                            name="unselected.py") as old:
            pid = old.pid
            daemon.assert_fresh()
            daemon.assert_fresh()   # two scans saw it
            assert not daemon.series("aiobpf_process_info", pid)
        with hostile_target(hostile_user, python, str(SECOND), "0", at_pid=pid) as new:
            assert _pid_of(new) == pid
            took = wait_for("the new process traced",
                            lambda: pending(daemon, pid) == SECOND + 1, daemon)
            print(f"the reused PID was looked at within {took:.1f} s")
            assert len(daemon.series("aiobpf_process_info", pid)) == 1
            assert_healthy(daemon)
        stop_in_time(daemon)


def test_a_dump_after_an_exec_is_not_answered_from_the_old_program(
        tmp_path: Path, hostile_user: User) -> None:
    """Right after an exec, before the daemon's next scan (4.5 s apart here), a dump through
    the daemon is not answered from what it knew of the old program: it is handed back to
    the CLI (which reads the new program itself) or answered from the new program."""
    python = by_label(PIE)   # the old program's addresses are all wrong in the new one
    with (run_daemon(tmp_path, select=SELECT, extra="scan_interval = 4.5\n") as daemon,
          hostile_target(hostile_user, python, str(FIRST), str(SECOND)) as target):
        pid = target.pid
        daemon.wait_traced(pid, timeout=15)
        daemon.assert_fresh(within=8)            # a scan just happened: 4.5 s till the next
        target.proc.send_signal(10)   # SIGUSR1: exec
        assert _wait_ready(target, "the exec'd program") == "READY second"
        reply = dumps.request(daemon.socket, {"pid": pid, "format": "tree"})
        handed_back = reply is None or "fallback" in reply
        print("the dump right after the exec:", "handed back to the CLI" if handed_back
              else "answered from the new program")
        if not handed_back:
            assert "error" not in reply, reply
            assert "second-7" in reply["output"] and "first-" not in reply["output"]
        cli = aiobpf("pstree", str(pid), socket=str(daemon.socket))
        assert cli.returncode == 0, cli.stderr
        assert "second_inner" in cli.stdout and "first_waiter" not in cli.stdout
        wait_for("the new program traced", lambda: pending(daemon, pid) == SECOND + 1,
                 daemon, timeout=10)
        assert_healthy(daemon)
        stop_in_time(daemon)
