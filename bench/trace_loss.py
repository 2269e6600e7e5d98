#!/usr/bin/env python3
"""Does `aiobpf trace` keep up?  The worst case: an asyncio.Queue ping-pong (two
steps per round trip, nothing else), traced for --duration seconds into a Chrome
trace file; the figures come from the file's own summary (``otherData``).

Prints the ping-pong's steps/s untraced and while traced, the steps written, the
step events lost (the ring buffer was full), the tracer's wall and CPU time and its
peak RSS.  ``--ring-pages`` overrides the ring's size (aiobpf's internal
AIOBPF_TRACE_RING_PAGES), to compare sizes.  ``--reader-only``: no decoding, the
events are only copied out of the ring as `aiobpf trace` does (in this process): what
the ring and its reader sustain when decoding does not share the CPUs with the target.

Run as root: ``.venv/bin/python bench/trace_loss.py [--duration 30] [--python PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from overhead import _python, _start_target  # noqa: E402


def _round_trips(proc: subprocess.Popen) -> int:
    assert proc.stdin and proc.stdout
    proc.stdin.write("\n")
    proc.stdin.flush()
    return int(proc.stdout.readline().split()[0])


def _rate(proc: subprocess.Popen, seconds: float) -> float:
    """The ping-pong's steps per second over ``seconds``."""
    before = _round_trips(proc)
    time.sleep(seconds)
    return 2 * (_round_trips(proc) - before) / seconds


def _reader_only(pid: int, duration: float) -> tuple[int, int, float]:
    """Events copied out of the ring, events lost, and the reader's CPU seconds."""
    sys.path.insert(0, str(REPO))
    from aiobpf.bpf.capture import Capture
    from aiobpf.cli.trace import POLL_MS, ring_limits
    from aiobpf.collector.target import open_target

    capture = Capture(ring_limits())
    try:
        capture.add(open_target(pid), trace=True)
        read = 0

        def take(_raw: bytes) -> None:   # copied out of the ring, then dropped
            nonlocal read
            read += 1

        capture.on_step_bytes(take)
        cpu, deadline = time.process_time(), time.monotonic() + duration
        while time.monotonic() < deadline:
            capture.poll(POLL_MS)
        capture.set_trace(pid, False)
        capture.poll(0)
        stats = capture.stats(pid)
        return read, stats.events_lost if stats else -1, time.process_time() - cpu
    finally:
        capture.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--ring-pages", type=int, help="ring buffer pages (a power of two)")
    parser.add_argument("--python", help="the target's interpreter command (default: pyenv "
                                         "3.12), e.g. 'chroot ROOT /usr/bin/python3.14'")
    parser.add_argument("--reader-only", action="store_true",
                        help="copy the events out of the ring, decode nothing")
    args = parser.parse_args()
    if args.ring_pages:
        os.environ["AIOBPF_TRACE_RING_PAGES"] = str(args.ring_pages)
    python = args.python.split() if args.python else _python()
    # the source on the command line: it runs in a chroot too ("chroot ROOT python3.14")
    target = _start_target([*python, "-c", (HERE / "targets" / "pingpong.py").read_text()])
    if args.reader_only:
        try:
            events, lost, cpu = _reader_only(target.pid, args.duration)
        finally:
            os.killpg(target.pid, signal.SIGKILL)
            target.wait()
        print(f"ping-pong ({' '.join(python)}), reader only, {args.duration:g} s: "
              f"{events / args.duration / 1e3:.0f} k steps/s traced, {events} events read, "
              f"{lost} lost, reader {cpu:.1f} s CPU "
              f"({1e6 * cpu / max(events, 1):.2f} us per event)")
        return
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        untraced = _rate(target, 3)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "trace.json"
            started = time.monotonic()
            tracer = subprocess.Popen([sys.executable, "-m", "aiobpf", "trace", str(target.pid),
                                       "--duration", str(args.duration), "-o", str(out)],
                                      env=env, stderr=subprocess.PIPE, text=True)
            time.sleep(min(10.0, args.duration / 2))   # the programs compile meanwhile
            traced = _rate(target, min(5.0, args.duration / 4))
            assert tracer.stderr
            stderr = tracer.stderr.read()
            _, status, usage = os.wait4(tracer.pid, 0)   # the tracer's own CPU and RSS
            tracer.returncode = os.waitstatus_to_exitcode(status)
            wall = time.monotonic() - started
            if tracer.returncode != 0:
                raise SystemExit(f"aiobpf trace failed: {stderr.strip()}")
            summary = json.loads(out.read_text())["otherData"]
    finally:
        os.killpg(target.pid, signal.SIGKILL)
        target.wait()
    print(f"ping-pong ({' '.join(python)}): {untraced / 1e3:.0f} k steps/s untraced, "
          f"{traced / 1e3:.0f} k steps/s while traced")
    print(f"trace of {args.duration:g} s: {summary['steps']} steps written "
          f"({summary['steps'] / args.duration / 1e3:.0f} k/s), "
          f"{summary['events_lost']} events lost, {summary['unmeasured_steps']} unmeasured; "
          f"tracer: {wall:.1f} s wall, {usage.ru_utime + usage.ru_stime:.1f} s CPU, "
          f"peak RSS {usage.ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
