"""The daemon's continuous CPU profiles: pprof files on a rotation, read by go tool
pprof, attributing a known split to the right tasks; a directory open to others is
refused; ``aiobpf profile`` answered from them, for root only."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aiobpf.daemon.profiling import REFRESH_S
from tests.conftest import RunningTarget, aiobpf, run_target
from tests.integration.daemon_proc import REPO, run_daemon
from tests.integration.test_profile import A_CHAIN, B_CHAIN, _ours
from tests.pythons import by_label

SELECT = "cpu_split\\.py"


def _pprof_top(path: Path) -> str:
    go = shutil.which("go")
    assert go, "go (Debian's golang-go: go tool pprof) is provisioned for this test"
    out = subprocess.run([go, "tool", "pprof", "-top", "-nodecount=100", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _cum(top: str, name: str) -> float:
    """The cumulative share (percent) of ``name`` in go tool pprof -top's table."""
    for line in top.splitlines():
        fields = line.split()
        if len(fields) >= 6 and " ".join(fields[5:]) == name:
            return float(fields[4].rstrip("%"))
    raise AssertionError(f"{name!r} not in:\n{top}")


def test_profiles_are_written_on_a_rotation_and_name_the_tasks(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    # 97 Hz, not 49: at 49 Hz a 2 s file read 50/50, 100/0 or 92/8 now and then under
    # load (the old code too): the CPU clock's 20.4 ms are about 2.5 of the target's
    # turns of 8 ms, so the samples likely fell on two phases of the turn only
    extra = (f'profiles = true\nprofile_rate = 97\nprofile_dir = "{profiles}"\nprofile_rotate = 2\n'
             "profile_keep = 6\n")
    with run_target(by_label("sid-3.14"), "cpu_split.py") as target, \
            run_daemon(tmp_path, select=SELECT, extra=extra) as daemon:
        daemon.wait_traced(target.pid)
        first = _wait_for_files(profiles, 3, timeout=40)[0]
        time.sleep(10)   # longer than keep + rotate: the first file goes
        files = sorted(profiles.glob("*.pb.gz"))
        log = daemon.log.read_text()
    # (a rotation whose samples wait for a read of the tasks that tore writes nothing:
    # they go in the next file)
    assert first not in files and len(files) >= 2, (files, log[-3000:])
    assert all(re.fullmatch(rf"{target.pid}-\d+\.pb\.gz", f.name) for f in files)
    assert stat.S_IMODE(profiles.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    top = _pprof_top(files[-1])
    a, b = _cum(top, "[task] A"), _cum(top, "[task] B")
    assert a + b > 90, top
    assert a / (a + b) == pytest.approx(0.75, abs=0.1), top
    assert _cum(top, "[task] parent") >= a   # A's awaiter is above it


def _wait_for_files(directory: Path, count: int, timeout: float) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(directory.glob("*.pb.gz"))
        if len(files) >= count:
            return files
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} files in {directory} after {timeout} s")


def test_a_profile_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    profiles = tmp_path / "open"
    profiles.mkdir(mode=0o777)
    os.chmod(profiles, 0o777)
    with run_target(by_label("sid-3.14"), "cpu_split.py") as target, \
            run_daemon(tmp_path, select=SELECT, extra=f'profiles = true\nprofile_rate = 49\n'
                                                      f'profile_dir = "{profiles}"\n') as daemon:
        daemon.wait_traced(target.pid)
        log = daemon.log.read_text()
    assert "continuous profiles are off" in log and "closed to others" in log, log[-2000:]
    assert list(profiles.iterdir()) == []


# -- aiobpf profile answered by the daemon -----------------------------------------------
def test_profile_asks_the_daemon_first_and_falls_back_saying_why(tmp_path: Path) -> None:
    """``aiobpf profile PID`` is answered from the daemon's continuous profile: the
    samples of the duration asked, at the daemon's rate (said on stderr), the known
    split under the right tasks; what the daemon cannot serve (another rate, wall
    mode) is sampled here after one line saying why; --no-daemon samples here."""
    rate, seconds = 99, 4
    extra = f'profiles = true\nprofile_rate = {rate}\nprofile_dir = "{tmp_path / "profiles"}"\n'
    with run_target(by_label("sid-3.14"), "cpu_split.py") as target, \
            run_daemon(tmp_path, select=SELECT, extra=extra) as daemon:
        daemon.wait_traced(target.pid)
        sock, pid = str(daemon.socket), str(target.pid)
        served = aiobpf("profile", pid, "--duration", str(seconds), socket=sock)
        other_rate = aiobpf("profile", pid, "--duration", "1", "--rate", "199", socket=sock)
        wall = aiobpf("profile", pid, "--duration", "0.5", "--mode", "wall", socket=sock)
        local = aiobpf("profile", pid, "--duration", "1", "--no-daemon", socket=sock)
    assert served.returncode == 0, served.stderr
    assert f"the daemon's samples, at its rate of {rate} Hz a thread" in served.stderr
    assert "sampling 1 thread" not in served.stderr   # (the local sampler's line)
    stacks = _ours(served.stdout)
    total = sum(stacks.values())
    # the samples of the duration asked (A and B spin all the time), not the daemon's all
    assert 0.6 * rate * seconds <= total <= 1.1 * rate * seconds, served.stderr
    a = sum(n for stack, n in stacks.items() if stack[-len(A_CHAIN):] == A_CHAIN)
    b = sum(n for stack, n in stacks.items() if stack[-len(B_CHAIN):] == B_CHAIN)
    assert a / total == pytest.approx(0.75, abs=0.05), stacks
    assert b / total == pytest.approx(0.25, abs=0.05), stacks
    for result, why in ((other_rate, f"the daemon samples at {rate} Hz"),
                        (wall, "the daemon keeps CPU profiles only, not --mode wall")):
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stderr.splitlines() if "did not answer" in line]
        assert len(lines) == 1 and why in lines[0], result.stderr
        assert lines[0].endswith(": sampling the process here")
        assert sum(_ours(result.stdout).values()) > 0
    assert local.returncode == 0 and "daemon" not in local.stderr, local.stderr
    assert "sampling 1 thread" in local.stderr


def _profile_through(socket: Path, pid: int) -> subprocess.Popen[str]:
    """``aiobpf profile PID --duration 60`` started, once it has asked the daemon."""
    proc = subprocess.Popen([sys.executable, "-m", "aiobpf", "profile", str(pid),
                             "--duration", "60"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "AIOBPF_SOCKET": str(socket)})
    assert proc.stderr is not None
    assert "asking the daemon" in proc.stderr.readline()
    return proc


@contextmanager
def _profiling_through_daemon(tmp_path: Path) -> Iterator[tuple[RunningTarget, subprocess.Popen]]:
    """A daemon profiling a cpu_split target at 99 Hz, and ``aiobpf profile`` of it
    through the daemon, 3 s into its samples (killed if the test leaves it running)."""
    extra = f'profiles = true\nprofile_rate = 99\nprofile_dir = "{tmp_path / "profiles"}"\n'
    with run_target(by_label("sid-3.14"), "cpu_split.py") as target, \
            run_daemon(tmp_path, select=SELECT, extra=extra) as daemon:
        daemon.wait_traced(target.pid)
        proc = _profile_through(daemon.socket, target.pid)
        try:
            time.sleep(3)
            yield target, proc
        finally:
            if proc.poll() is None:   # the test failed before it ended
                proc.kill()
                proc.communicate()


def test_profile_through_the_daemon_ends_on_ctrl_c_with_the_samples_taken(tmp_path: Path
                                                                          ) -> None:
    with _profiling_through_daemon(tmp_path) as (_, proc):
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    assert proc.returncode == 0, err
    assert "the daemon's samples" in err
    assert took < 2 * REFRESH_S, err   # (the samples are attributed at once)
    assert 150 <= sum(_ours(out).values()) <= 99 * (3 + took) * 1.1, err


def test_profile_through_the_daemon_is_root_only(tmp_path: Path) -> None:
    """A user who does not own the target is refused: by the socket's mode, and by
    the daemon's check of the peer's credentials when the socket is opened up."""
    public = Path(tempfile.mkdtemp(prefix="aiobpf-test-", dir="/tmp"))
    public.chmod(0o755)
    extra = f'profiles = true\nprofile_rate = 49\nprofile_dir = "{tmp_path / "profiles"}"\n'
    try:
        with run_target(by_label("sid-3.14"), "cpu_split.py") as target, \
                run_daemon(tmp_path, select=SELECT, extra=extra,
                           socket_dir=public / "run") as daemon:
            daemon.wait_traced(target.pid)
            sock, pid = str(daemon.socket), str(target.pid)
            denied = aiobpf("profile", pid, "--duration", "1", user="nobody", socket=sock)
            daemon.socket.parent.chmod(0o755)
            daemon.socket.chmod(0o666)
            asked = aiobpf("profile", pid, "--duration", "1", user="nobody", socket=sock)
    finally:
        shutil.rmtree(public)
    assert denied.returncode == 77, denied.stderr   # its own sampling: refused
    assert "asking the daemon" not in denied.stderr
    assert asked.returncode == 77, asked.stderr
    assert "root only" in asked.stderr and asked.stdout == "", asked.stderr
    for result in (denied, asked):
        assert "Traceback" not in result.stderr


def test_profile_through_the_daemon_of_a_target_that_exits_keeps_the_samples_taken(
        tmp_path: Path) -> None:
    with _profiling_through_daemon(tmp_path) as (target, proc):
        target.proc.kill()
        target.proc.wait()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"process {target.pid} exited: writing the samples taken until then" in err
    assert sum(_ours(out).values()) >= 100, err
