"""BPF failing under a root daemon, for real: missing capabilities, a seccomp profile
that refuses perf events or raw tracepoints (as a container runtime's may), descriptors
running out in the middle of a window.  Whatever fails, the daemon goes on (memory reads
only, for what failed), says why in one log line and in ``aiobpf_errors_total``, and
leaves nothing attached."""

from __future__ import annotations

import os
import re
import resource
import sys
import time
from pathlib import Path

import pytest

from aiobpf.bpf.capture import Capture
from aiobpf.bpf.program import CaptureUnavailable
from aiobpf.collector.target import open_target
from tests.adversarial.conftest import User, assert_healthy, stop_in_time
from tests.conftest import IN_ROOT_DIR, run_target
from tests.integration.daemon_proc import DaemonProcess, daemon_programs, probes_of, run_daemon
from tests.pythons import by_label

DENY = [sys.executable, str(Path(__file__).parent / "deny_syscalls.py")]
BPF_RAW_TRACEPOINT_OPEN, BPF_LINK_CREATE = 17, 28
# The targets run under names of their own, so that these daemons trace no other test's
# processes.
DEPTH, ALTERNATING = "bpf_failures_depth.py", "bpf_failures_alternating.py"
SELECT = " " + re.escape(IN_ROOT_DIR) + "/bpf_failures_(depth|alternating)\\.py"




def _capture_of(daemon: DaemonProcess, pid: int) -> str:
    info = "".join(daemon.series("aiobpf_process_info", pid))
    return info.split('capture="', 1)[1].split('"', 1)[0] if 'capture="' in info else ""


def _assert_memory_only(daemon: DaemonProcess, pid: int, kind: str, said: str,
                        once: bool = False) -> None:
    """``pid`` is traced from memory reads, the failure is counted as ``kind`` and said
    in the log (in a line that has ``said``; ``once``: a failure of the whole daemon,
    said in one line, not once per process), and the daemon holds no probe or hook."""
    daemon.wait_traced(pid, timeout=10.0)
    assert _capture_of(daemon, pid) == "memory"
    deadline = time.monotonic() + 10
    while not daemon.series("aiobpf_tasks_pending", pid):
        assert time.monotonic() < deadline, "no memory read in 10 s"
        time.sleep(0.2)
    assert (daemon.value("aiobpf_errors_total", f'kind="{kind}"') or 0) >= 1, (
        daemon.scrape(), daemon.log.read_text())
    log = daemon.log.read_text()
    lines = [line for line in log.splitlines() if said in line]
    assert (len(lines) == 1) if once else lines, log
    assert "Traceback" not in log, log
    assert probes_of(daemon.proc.pid) == []


@pytest.mark.parametrize("dropped", ["bpf,-perfmon,-sys_admin", "perfmon,-sys_admin"],
                         ids=["no CAP_BPF", "CAP_BPF without CAP_PERFMON"])
def test_a_daemon_without_bpf_privileges_reads_memory_only(
        tmp_path: Path, hostile_user: User, dropped: str) -> None:
    """Without the capabilities to load tracing programs (CAP_BPF alone lets the maps be
    created, not the programs load), the daemon starts and reads memory."""
    wrapper = ["setpriv", "--inh-caps=-all", f"--bounding-set=-{dropped}"]
    with (run_target(by_label("sid-3.14"), "depth.py", "5", "2", name=DEPTH,
                     user=hostile_user.name) as target,
          run_daemon(tmp_path, select=SELECT, wrapper=wrapper) as daemon):
        _assert_memory_only(daemon, target.pid, "bpf_load", "BPF capture is off",
                            once=True)
        assert daemon_programs(daemon.proc.pid) == 0
        assert_healthy(daemon, DEPTH)
        stop_in_time(daemon)


@pytest.mark.parametrize("denied", [["--perf-event-open", "--bpf-cmd", str(BPF_LINK_CREATE)],
                                    ["--bpf-cmd", str(BPF_RAW_TRACEPOINT_OPEN)]],
                         ids=["no uprobes (perf events, links)",
                              "no raw tracepoints (syscall hooks)"])
def test_a_calibration_that_bpf_refuses_leaves_the_daemon_reading_memory(
        tmp_path: Path, hostile_user: User, denied: list[str]) -> None:
    """The programs load but cannot be attached: the calibration at start fails (it used
    to kill the daemon); no capture could work, so none is kept: no program stays."""
    with (run_target(by_label("sid-3.14"), "depth.py", "5", "2", name=DEPTH,
                     user=hostile_user.name) as target,
          run_daemon(tmp_path, select=SELECT, wrapper=[*DENY, *denied, "--"]) as daemon):
        _assert_memory_only(daemon, target.pid, "calibrate", "calibration failed",
                            once=True)
        assert daemon_programs(daemon.proc.pid) == 0
        assert_healthy(daemon, DEPTH)
        stop_in_time(daemon)


def test_probes_placed_before_a_failed_attach_are_removed(
        tmp_path: Path, hostile_user: User) -> None:
    """The uprobes of a file attach, then the syscall hooks are refused: the uprobes
    placed are taken out again, the process is read from memory, and another process
    (of another file) meets the same refusal without anything left behind.  (A fixed
    probe cost skips the calibration, which would have met the refusal first.)"""
    wrapper = [*DENY, "--bpf-cmd", str(BPF_RAW_TRACEPOINT_OPEN), "--"]
    with (run_target(by_label("sid-3.14"), "alternating.py", "8", "0.001", name=ALTERNATING,
                     user=hostile_user.name) as target,
          run_daemon(tmp_path, select=SELECT, wrapper=wrapper, probe_cost_us=2.0) as daemon):
        _assert_memory_only(daemon, target.pid, "attach", "probes not placed")
        with run_target(by_label("sid-3.13"), "alternating.py", "8", "0.001",
                        name=ALTERNATING) as other:
            _assert_memory_only(daemon, other.pid, "attach", "probes not placed")
        assert (daemon.value("aiobpf_errors_total", 'kind="attach"') or 0) >= 2
        for _ in range(10):   # and none come back later
            assert probes_of(daemon.proc.pid) == []
            time.sleep(0.2)
        assert_healthy(daemon, DEPTH)
        stop_in_time(daemon)


def _limit_for(spare: int) -> int:
    """The RLIMIT_NOFILE under which exactly ``spare`` more descriptors can be opened
    (new descriptors take the lowest free numbers)."""
    taken = [os.dup(0) for _ in range(spare)]
    for fd in taken:
        os.close(fd)
    return max(taken) + 1


@pytest.mark.parametrize(("spare", "failing"), [(1, "uprobe"), (4, "syscall hooks")],
                         ids=["the second uprobe fails", "the syscall hooks fail"])
def test_a_window_that_cannot_reattach_leaves_nothing_attached(spare: int, failing: str
                                                               ) -> None:
    """A window's re-attach runs out of descriptors (RLIMIT_NOFILE lowered to allow
    ``spare`` more) after some of its probes were placed: those are removed again, the
    failure is an ``attach`` CaptureUnavailable, and the next window attaches normally."""
    with run_target(by_label("sid-3.14"), "alternating.py", "4", "0.001") as target:
        capture = Capture()
        try:
            attachment = capture.add(open_target(target.pid))
            assert attachment.active and attachment.file is not None
            file = attachment.file
            kinds = sorted(e["fd_type"] for e in probes_of(os.getpid()))
            assert kinds == ["raw_tracepoint", "raw_tracepoint", "uprobe", "uprobe", "uprobe",
                             "uretprobe"], kinds
            capture.pause(file)
            assert probes_of(os.getpid()) == []
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (_limit_for(spare), hard))
            try:
                with pytest.raises(CaptureUnavailable) as failed:
                    capture.resume(file)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert failed.value.kind == "attach"
            assert failing in str(failed.value)
            assert not capture.is_attached(file) and capture.probe_count() == 0
            assert probes_of(os.getpid()) == []
            capture.resume(file)
            assert capture.probe_count() == 4
            assert len(probes_of(os.getpid())) == 6
        finally:
            capture.close()
            capture.close()   # twice: safe
        assert probes_of(os.getpid()) == []
