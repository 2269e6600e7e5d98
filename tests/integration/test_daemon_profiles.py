"""The daemon's continuous CPU profiles: pprof files on a rotation, read by go tool
pprof, attributing a known split to the right tasks; a directory open to others is
refused."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_target
from tests.integration.daemon_proc import run_daemon
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
    extra = (f'profile_rate = 49\nprofile_dir = "{profiles}"\nprofile_rotate = 2\n'
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
            run_daemon(tmp_path, select=SELECT,
                       extra=f'profile_rate = 49\nprofile_dir = "{profiles}"\n') as daemon:
        daemon.wait_traced(target.pid)
        log = daemon.log.read_text()
    assert "continuous profiles are off" in log and "closed to others" in log, log[-2000:]
    assert list(profiles.iterdir()) == []
