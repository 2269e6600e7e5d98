"""The two kinds of uprobe (aiobpf/bpf/uprobes.py), on a real target: BPF links where
the kernel has them (this kernel does: a machine without them fails here), perf events
where it does not; both count steps, pause and resume a window, and leave nothing; and
neither sets a reference counter, so both can share a place (the kernel refuses two
probes at one place with different counters, and a counter makes it write into the
traced process's memory)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from aiobpf.bpf.capture import Capture
from aiobpf.bpf.uprobes import LINKS, PERF
from aiobpf.collector.target import open_target
from tests.conftest import RunningTarget, run_target
from tests.integration.daemon_proc import probes_of
from tests.pythons import by_label

PYTHON = by_label("sid-3.14")   # 3.12+: Task.__init__'s entry and return probes too


def _uprobes() -> list[dict]:
    return [e for e in probes_of(os.getpid()) if e["fd_type"] in ("uprobe", "uretprobe")]


def _steps(capture: Capture, pid: int) -> int:
    stats = capture.stats(pid)
    assert stats is not None
    return int(stats.steps)


@pytest.fixture(scope="module")
def target() -> Iterator[RunningTarget]:
    with run_target(PYTHON, "alternating.py", "4", "0.001") as running:
        yield running


def test_links_where_the_kernel_has_them() -> None:
    capture = Capture()
    try:
        assert capture.uprobes.kind == LINKS, "this kernel (6.6+) takes uprobe-multi links"
    finally:
        capture.close()


@pytest.mark.parametrize("kind", [LINKS, PERF])
def test_either_kind_counts_pauses_and_resumes(target: RunningTarget, kind: str) -> None:
    """Steps are counted while attached, not while paused; the kernel holds exactly the
    probes placed (entry and return at Task.__init__), then none."""
    before = _uprobes()
    capture = Capture(uprobes=kind)
    try:
        assert capture.uprobes.kind == kind
        attachment = capture.add(open_target(target.pid))
        assert attachment.file is not None
        file = attachment.file
        held = sorted(e["fd_type"] for e in _uprobes() if e not in before)
        assert held == ["uprobe", "uprobe", "uprobe", "uretprobe"], held
        time.sleep(0.3)
        counted = _steps(capture, target.pid)
        assert counted > 50
        capture.pause(file)
        assert [e for e in _uprobes() if e not in before] == []
        paused = _steps(capture, target.pid)
        time.sleep(0.3)
        assert _steps(capture, target.pid) == paused
        capture.resume(file)
        time.sleep(0.3)
        assert _steps(capture, target.pid) > paused + 50
    finally:
        capture.close()
    assert [e for e in _uprobes() if e not in before] == []


def test_both_kinds_share_a_place(target: RunningTarget) -> None:
    """Perf events and links at the same offsets of the same file, at once: both are
    placed and both count (with bcc's own call, the perf event's counter offset was
    whatever its stack held, and the kernel refused the link: EINVAL)."""
    with ExitStack() as stack:
        captures = []
        for kind in (PERF, LINKS):
            capture = Capture(uprobes=kind)
            stack.callback(capture.close)
            capture.add(open_target(target.pid))
            captures.append(capture)
        places = {(e["offset"], e["fd_type"]) for e in _uprobes()}
        assert len(places) == 4 and len(_uprobes()) >= 8
        start = [_steps(c, target.pid) for c in captures]
        time.sleep(0.3)
        assert all(_steps(c, target.pid) > s + 50 for c, s in zip(captures, start, strict=True))
