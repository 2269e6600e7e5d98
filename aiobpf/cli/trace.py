"""aiobpf trace: every task step of a process, captured in kernel space."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from aiobpf import errors
from aiobpf.bpf.capture import Capture
from aiobpf.bpf.program import TRACE_LIMITS, CaptureUnavailable, MapLimits
from aiobpf.bpf.records import StepDecoder, StepEvents
from aiobpf.cli.common import pid_argument, stop_on_signals
from aiobpf.collector.model import Step
from aiobpf.collector.target import Target, open_target
from aiobpf.errors.translate import translate_errors
from aiobpf.exporters.trace import ChromeTrace, JsonLines, TraceSummary

RING_PAGES_ENV = "AIOBPF_TRACE_RING_PAGES"   # pages of ring buffer (tests: a tiny one)
POLL_MS = 50            # the ring is read this often while nothing is left to decode,
DECODE_SLICE_S = 0.02   # and between slices of decoding while something is
BACKLOG_NOTE = 100_000  # events left to decode at the end that are worth a word on stderr


def ring_limits() -> MapLimits:
    """The trace's map limits: its ring's size from the environment, when set."""
    pages = os.environ.get(RING_PAGES_ENV)
    return MapLimits(ring_pages=int(pages)) if pages else TRACE_LIMITS


def _cannot_trace(reason: str) -> errors.AiobpfError:
    """Why no probes: for want of privileges (exit status 77), or else (see doctor)."""
    if errors.may_load_bpf():
        return errors.AiobpfError(f"cannot trace: {reason}", "see aiobpf doctor")
    return errors.PrivilegeError(f"cannot trace: {reason}",
                                 "run it as root, e.g. sudo aiobpf trace PID")


class TraceCommand:
    """Record every asyncio task step of PID: which task, on which thread, when, for how
    long, how long after its loop woke up, and the stack it suspended at.

    Steps are captured by uprobes on the C asyncio module's task step and wakeup points,
    in kernel space. Output is JSON lines on stdout, or with -o FILE.json a Chrome trace
    (open it in https://ui.perfetto.dev or chrome://tracing): one track per task (or per
    thread with --tracks thread), one slice per step. Each ends with a summary (the
    last JSON line; the file's otherData): the steps written, the step events lost
    (the ring buffer was full), and the unmeasured steps, left out because their
    thread's loop had not been seen waiting yet (their end is not known). When steps
    come faster than they are decoded, none is lost: the rest are written after the
    trace ends. Ctrl-C ends the trace early; a second one gives up the steps not yet
    written.

    On 3.12+ the first step of a task that starts eagerly (eager_start=True, an eager
    task factory) runs inside the step that created it: it is a step of its own
    ("eager": true), and the step it ran inside does not count its time (its
    "duration_ns" is its own; "nested_ns" the eager steps'; in a trace file its slice
    spans both, with "own_us" in its args)."""

    name = "trace"
    help = "record every task step (JSON lines, or a Perfetto/Chrome trace)"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        pid_argument(parser, capture=False)
        parser.add_argument("--duration", type=float, default=10.0, metavar="SECONDS",
                            help="how long to trace (default 10; Ctrl-C ends it sooner)")
        parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                            help="write a Chrome/Perfetto trace (JSON) to FILE instead of "
                                 "JSON lines on stdout")
        parser.add_argument("--tracks", choices=("task", "thread"), default="task",
                            help="in the trace file, one track per task (default) or per thread")

    def run(self, args: argparse.Namespace) -> int:
        with translate_errors(args.pid):
            target = open_target(args.pid, use_dwarf=not args.no_dwarf,
                                 debug_dirs=args.debug_dir)
        # From here a signal only ends the trace (a second Ctrl-C gives up the steps not
        # yet written): it never interrupts bcc while it loads or attaches.
        with stop_on_signals(second_interrupts=True) as stopped:
            try:
                capture = Capture(ring_limits())
            except CaptureUnavailable as exc:
                target.close()
                raise _cannot_trace(str(exc)) from None
            try:
                if stopped():
                    print("aiobpf: stopped before tracing began", file=sys.stderr)
                    return 0
                attachment = capture.add(target, trace=True)
                if not attachment.active:
                    raise _cannot_trace("; ".join(attachment.notes))
                self._trace(args, capture, target, stopped)
            finally:
                capture.close()
                target.close()
        return 0

    def _trace(self, args: argparse.Namespace, capture: Capture, target: Target,
               stopped: Callable[[], bool]) -> None:
        """Read the ring until the deadline (or a signal), writing steps as they are
        decoded; then the summary."""
        unix_offset = time.time_ns() - time.monotonic_ns()
        deadline = time.monotonic() + args.duration
        try:
            out: IO[str] = (args.output.open("w", encoding="utf-8") if args.output
                            else sys.stdout)
        except OSError as exc:
            raise errors.AiobpfError(f"cannot write {args.output}: {exc.strerror}") from None
        writer = (ChromeTrace(out, target.pid, args.tracks) if args.output
                  else JsonLines(out, target.pid, unix_offset))
        pipe_closed = False

        def write(step: Step) -> None:
            nonlocal pipe_closed
            try:
                writer.add(step)
            except BrokenPipeError:  # the reader (head, jq) has gone: end quietly
                pipe_closed = True

        steps = StepEvents(StepDecoder(target), target.pid, int(deadline * 1e9), write)
        capture.on_step_bytes(steps.pending.append)
        lost = 0
        try:
            while not stopped() and not pipe_closed and time.monotonic() < deadline:
                capture.poll(0 if steps.pending else POLL_MS)
                steps.decode(until=time.monotonic() + DECODE_SLICE_S)
            capture.set_trace(target.pid, False)
            capture.poll(0)
            if len(steps.pending) > BACKLOG_NOTE:
                print(f"aiobpf: writing the {len(steps.pending)} steps not yet decoded "
                      "(Ctrl-C again gives them up)", file=sys.stderr)
            if not pipe_closed:
                steps.decode()
            stats = capture.stats(target.pid)
            lost = stats.events_lost if stats else 0
            if not pipe_closed:
                writer.close(TraceSummary(steps.written, lost, steps.unmeasured))
                out.flush()
        except BrokenPipeError:
            pipe_closed = True
        finally:
            if args.output:
                out.close()
        print(f"aiobpf: traced {steps.written} steps of process {target.pid}"
              + (f" ({lost} lost: the ring buffer was full)" if lost else "")
              + (f"; wrote {args.output}" if args.output else ""), file=sys.stderr)
