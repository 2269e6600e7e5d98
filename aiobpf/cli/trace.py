"""aiobpf trace: every task step of a process, captured in kernel space."""

from __future__ import annotations

import argparse
import ctypes as ct
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

from aiobpf import errors
from aiobpf.cli.common import pid_argument
from aiobpf.collector.frames import Frames
from aiobpf.collector.loader import (
    CAPTURE_CREATED,
    CAPTURE_FINISHED,
    CAPTURE_RUNNING,
    FRAME_KINDS,
    MAX_DEPTH,
    TRACE_LIMITS,
    Capture,
    CaptureUnavailable,
    FrameRef,
    MapLimits,
    TaskRecord,
)
from aiobpf.collector.memory import ReadFault, RemoteMemory
from aiobpf.collector.model import Frame
from aiobpf.collector.objects import DecodeError, Objects
from aiobpf.collector.target import Target, open_target
from aiobpf.collector.tasks import task_name
from aiobpf.errors.translate import translate_errors
from aiobpf.exporters.trace import ChromeTrace, JsonLines, Step, TraceSummary

_STATES = {CAPTURE_FINISHED: "finished", CAPTURE_RUNNING: "running", CAPTURE_CREATED: "created"}
RING_PAGES_ENV = "AIOBPF_TRACE_RING_PAGES"   # pages of ring buffer (tests: a tiny one)
POLL_MS = 50            # the ring is read this often while nothing is left to decode,
DECODE_SLICE_S = 0.02   # and between slices of decoding while something is
BACKLOG_NOTE = 100_000  # events left to decode at the end that are worth a word on stderr
_FRAMES_AT, _KINDS_AT = TaskRecord.frames.offset, TaskRecord.kinds.offset
_FRAME_SIZE = ct.sizeof(FrameRef)


class _Decoder:
    """Task names and frames of step records, from the target's (unchanging) objects."""

    def __init__(self, target: Target) -> None:
        self.objs = Objects(RemoteMemory(target.pid), target.layout)
        self.frames = Frames(self.objs)
        self.names: dict[int, str] = {}
        self.stacks: dict[bytes, tuple[Frame, ...]] = {}   # by the record's frame bytes

    def step(self, r: TaskRecord, raw: bytes) -> Step:
        """The step of record ``r``, whose bytes are ``raw``."""
        name = self.names.get(r.name)
        if name is None:
            # A name is read from memory as the target has it now, not from pages
            # cached when an earlier step was decoded: it may be newer than they are.
            self.objs.mem.clear()
            try:
                name = task_name(self.objs, r.name)
            except (DecodeError, ReadFault):
                name = "?"
            self.names[r.name] = name
        depth = min(r.depth, MAX_DEPTH)
        key = (raw[_FRAMES_AT:_FRAMES_AT + _FRAME_SIZE * depth]
               + raw[_KINDS_AT:_KINDS_AT + depth])
        frames = self.stacks.get(key)
        if frames is None:
            frames = self.stacks[key] = self._frames(r, depth)
        span = r.taken_ns - r.step_start_ns
        return Step(r.task, name, r.tid, r.step_start_ns, max(span - r.nested_ns, 0),
                    r.wake_delay_ns, _STATES.get(r.state, "suspended"), frames,
                    eager=bool(r.eager), nested_ns=min(r.nested_ns, span))

    def _frames(self, r: TaskRecord, depth: int) -> tuple[Frame, ...]:
        frames = []
        for i in range(depth):
            try:
                frames.append(self.frames.frame_of(r.frames[i].code, r.frames[i].instr,
                                                   FRAME_KINDS[r.kinds[i] % 3]))
            except (DecodeError, ReadFault):
                break
        return tuple(frames)


class _Steps:
    """The events of one traced process, from ring-buffer bytes to written steps.

    A step is written only once its thread's loop has been seen waiting (its wake
    delay is known): until then the programs cannot tell where a step ends if the
    loop waited in between (the syscall hooks had not seen a wait yet), so such a step
    may have absorbed I/O waits. Those steps are counted (``unmeasured``), not written.
    An eager first step is always written: Task.__init__'s probes bracket it (and its
    record comes before the one of the step it ran in, which ends later).
    """

    def __init__(self, decoder: _Decoder, pid: int, end_ns: int,
                 write: Callable[[Step], None]) -> None:
        self.decoder, self.pid, self.end_ns, self.write = decoder, pid, end_ns, write
        self.pending: deque[bytes] = deque()   # copied from the ring, not yet decoded
        self.waited: set[int] = set()          # threads whose loop was seen waiting
        self.written = 0
        self.unmeasured = 0

    def decode(self, until: float | None = None) -> None:
        """Decode and write pending events (until the monotonic time ``until``)."""
        pending = self.pending
        while pending and (until is None or time.monotonic() < until):
            raw = pending.popleft()
            record = TaskRecord.from_buffer_copy(raw)
            if record.pid != self.pid or record.step_start_ns > self.end_ns:
                continue   # events can outpace a read: the trace ends on time
            if record.tid not in self.waited and not record.eager:
                if record.wake_delay_ns == 0:   # 0: the loop was never seen waking
                    self.unmeasured += 1
                    continue
                self.waited.add(record.tid)
            self.write(self.decoder.step(record, raw))
            self.written += 1


def _ring_limits() -> MapLimits:
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
        try:
            capture = Capture(_ring_limits())
        except CaptureUnavailable as exc:
            raise _cannot_trace(str(exc)) from None
        stop = False

        def finish(_signo: int, _frame: object) -> None:
            nonlocal stop
            if stop:   # a second Ctrl-C: the steps not yet written are given up
                raise KeyboardInterrupt
            stop = True

        previous = {sig: signal.signal(sig, finish) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            attachment = capture.add(target, trace=True)
            if not attachment.active:
                raise _cannot_trace("; ".join(attachment.notes))
            self._trace(args, capture, target, lambda: stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
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

        steps = _Steps(_Decoder(target), target.pid, int(deadline * 1e9), write)
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
