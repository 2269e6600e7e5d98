"""aiobpf profile and aiobpf top leave nothing in the kernel however they end: at the end
of their run, on Ctrl-C (SIGINT), on SIGTERM and on SIGKILL.  While each runs, the test
reads from the kernel what it holds (BPF programs, links, perf events); once it is gone,
each of those objects must be gone too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import NO_DAEMON_SOCKET, run_target
from tests.integration.daemon_proc import (
    bpf_object_exists,
    bpf_objects_left,
    link_ids,
    probes_of,
    program_ids,
)
from tests.pythons import by_label

REPO = Path(__file__).resolve().parents[2]
UPROBE_EVENTS = Path("/sys/kernel/tracing/uprobe_events")


@dataclass
class Held:
    """What a process holds in the kernel, read from its descriptors."""

    programs: set[int]
    links: set[int]
    perf_events: int
    uprobes: int


def _held(pid: int) -> Held:
    perf = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            perf += os.readlink(fd) == "anon_inode:[perf_event]"
        except OSError:
            continue
    return Held(program_ids(pid), link_ids(pid), perf, len(probes_of(pid)))


def _uprobe_events() -> set[str]:
    return set(UPROBE_EVENTS.read_text().splitlines()) if UPROBE_EVENTS.exists() else set()


def _start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "aiobpf", *argv], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "AIOBPF_SOCKET": NO_DAEMON_SOCKET})


def _wait_for(proc: subprocess.Popen[str], held: Callable[[Held], bool],
              timeout: float = 60) -> Held:
    """What ``proc`` holds once it holds all it will (``held`` says when)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        now = _held(proc.pid)
        if held(now):
            return now
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"never held what it should: {_held(proc.pid)}")


CASES = [pytest.param(command, ending, id=f"{command}-{ending}")
         for command in ("profile", "top") for ending in ("end", "SIGINT", "SIGTERM", "SIGKILL")]


@pytest.mark.parametrize(("command", "ending"), CASES)
def test_nothing_is_left_in_the_kernel(command: str, ending: str) -> None:
    before = _uprobe_events()
    with run_target(by_label("sid-3.14"), "cpu_split.py") as target:
        if command == "profile":
            # --duration ends the "end" case; a signal ends the others long before.
            duration = "4" if ending == "end" else "60"
            proc = _start(["profile", str(target.pid), "--duration", duration])
            # sampling: a program and a CPU-clock perf event on the target's thread
            def complete(h: Held) -> bool:
                return bool(h.programs) and h.perf_events >= 1
        else:
            iterations = "3" if ending == "end" else "1000"
            proc = _start(["top", str(target.pid), "--plain", "--interval", "0.5",
                           "--iterations", iterations])
            # sampling and counting steps: uprobes on the target's asyncio module too
            def complete(h: Held) -> bool:
                return bool(h.programs) and h.perf_events >= 1 and h.uprobes >= 2
        try:
            held = _wait_for(proc, complete)
            alive = [i for i in held.programs if bpf_object_exists("prog", i)] + [
                i for i in held.links if bpf_object_exists("link", i)]
            assert len(alive) == len(held.programs) + len(held.links), "bpftool sees them"
            if ending != "end":
                if ending != "SIGKILL":
                    # Attached is not yet sampled: at 99 Hz a second holds ~100 samples
                    # (and one of top's views), which the signal must not lose.
                    time.sleep(1.0)
                proc.send_signal(getattr(signal, ending))
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert target.proc.poll() is None, "the target outlived its profiler"
    if ending == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
        assert out.strip(), "the samples or views taken before the end are written"
    left = bpf_objects_left(held.programs, held.links)
    assert not left, f"{command} ended by {ending} left {left} (held {held})"
    assert _uprobe_events() <= before, "uprobe events were left in tracefs"
