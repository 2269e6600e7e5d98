"""A process whose examination never ends costs only that process.

The daemon (in this process, memory reads only) examines each new process in a worker
thread.  Here examining one real target blocks for ever (as a read from a file system
that never answers would); the loop must keep scanning and publishing, trace another
target meanwhile, and stop promptly.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from aiobpf.daemon import service
from aiobpf.daemon.config import Config, Selection
from tests.conftest import TARGETS, run_target
from tests.pythons import by_label


def test_a_stuck_examination_does_not_hold_the_loop(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    python = by_label("debian-3.11")
    script = tmp_path / "aiobpf_examine_stuck.py"
    script.write_text((TARGETS / "depth.py").read_text())
    release = threading.Event()
    real_open = service.open_target

    with run_target(python, script, "2", "2") as stuck, \
            run_target(python, TARGETS / "depth.py", "2", "2") as fine:
        def open_target(pid: int, **kwargs):
            if pid == stuck.pid:
                release.wait()            # never answers (until the test ends)
            return real_open(pid, **kwargs)

        monkeypatch.setattr(service, "open_target", open_target)
        monkeypatch.setattr(service, "EXAMINE_LIMIT_S", 2.0, raising=False)
        monkeypatch.setattr(service, "EXAMINE_GRACE_S", 1.0, raising=False)
        config = Config(scan_interval=0.2, refresh_interval=0.5, bpf=False,
                        select=Selection(cmdline=[r"aiobpf_examine_stuck\.py|/depth\.py"]))
        daemon = service.Daemon(config, pids=[stuck.pid, fine.pid])
        loop = threading.Thread(target=daemon.run, daemon=True)
        try:
            loop.start()
            deadline = time.monotonic() + 20
            while fine.pid not in daemon.traced:
                assert time.monotonic() < deadline, "the other process was never traced"
                time.sleep(0.1)
            first = daemon.last_scan
            time.sleep(1.0)
            assert daemon.last_scan > first          # the loop goes on
            assert stuck.pid in daemon._examining
            while daemon.errors["examine_timeout"] == 0:   # given up after limit + grace
                assert time.monotonic() < deadline, "the stuck examination was never dropped"
                time.sleep(0.1)
            assert stuck.pid not in daemon.traced and stuck.pid not in daemon._examining
            assert daemon.last_scan > first
            t0 = time.monotonic()
            daemon.stop()
            loop.join(3.0)
            took = time.monotonic() - t0
            assert not loop.is_alive() and took < 3.0, f"stopped after {took:.1f} s"
        finally:
            daemon.stop()
            release.set()
            loop.join(10)


def test_a_burst_of_new_processes_is_examined_a_few_at_a_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """More new processes than workers: the rest wait for the next scan, not for a
    growing pause, and all are traced within seconds."""
    python = by_label("debian-3.11")
    monkeypatch.setattr(service, "MAX_EXAMINING", 1)
    with ExitStack() as stack:
        targets = [stack.enter_context(run_target(python, TARGETS / "depth.py", "2", "2"))
                   for _ in range(4)]
        config = Config(scan_interval=0.5, refresh_interval=0.5, bpf=False,
                        select=Selection(cmdline=[r"/depth\.py"]))
        daemon = service.Daemon(config, pids=[t.pid for t in targets])
        loop = threading.Thread(target=daemon.run, daemon=True)
        loop.start()
        stack.callback(loop.join, 10)
        stack.callback(daemon.stop)
        t0 = time.monotonic()
        while not all(t.pid in daemon.traced for t in targets):
            assert time.monotonic() - t0 < 10, f"traced: {sorted(daemon.traced)}"
            time.sleep(0.1)
        print(f"4 processes, one worker: all traced in {time.monotonic() - t0:.1f} s")
        assert daemon.errors["examine_busy"] == 0


def test_a_parse_past_the_deadline_costs_only_that_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The parsers check the examination's deadline: past it, the process is given up
    (counted as examine_timeout), the loop goes on, nothing is left open."""
    python = by_label("debian-3.11")
    monkeypatch.setattr(service, "EXAMINE_LIMIT_S", 1e-6)
    with run_target(python, TARGETS / "depth.py", "2", "2") as target:
        config = Config(scan_interval=0.2, bpf=False,
                        select=Selection(cmdline=[r"/depth\.py"]))
        daemon = service.Daemon(config, pids=[target.pid])
        loop = threading.Thread(target=daemon.run, daemon=True)
        before = len(os.listdir("/proc/self/fd"))
        loop.start()
        try:
            deadline = time.monotonic() + 10
            while daemon.errors["examine_timeout"] == 0:
                assert time.monotonic() < deadline, dict(daemon.errors)
                time.sleep(0.05)
            first = daemon.last_scan
            time.sleep(0.5)
            assert daemon.last_scan > first and target.pid not in daemon.traced
            assert not daemon._examining
        finally:
            daemon.stop()
            loop.join(5)
        assert len(os.listdir("/proc/self/fd")) <= before
