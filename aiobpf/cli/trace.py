"""aiobpf trace: every task step of a process, captured in kernel space."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from aiobpf import errors
from aiobpf.cli.common import pid_argument, translate_errors
from aiobpf.collector.frames import Frames
from aiobpf.collector.loader import (
    CAPTURE_CREATED,
    CAPTURE_FINISHED,
    CAPTURE_RUNNING,
    FRAME_KINDS,
    Capture,
    CaptureUnavailable,
    TaskRecord,
)
from aiobpf.collector.memory import ReadFault, RemoteMemory
from aiobpf.collector.objects import DecodeError, Objects
from aiobpf.collector.target import Target, open_target
from aiobpf.collector.tasks import task_name
from aiobpf.exporters.trace import Step, chrome_trace, write_json_line

_STATES = {CAPTURE_FINISHED: "finished", CAPTURE_RUNNING: "running", CAPTURE_CREATED: "created"}


class _Decoder:
    """Task names and frames of step records, from the target's (unchanging) objects."""

    def __init__(self, target: Target) -> None:
        self.objs = Objects(RemoteMemory(target.pid), target.layout)
        self.frames = Frames(self.objs)
        self.names: dict[int, str] = {}

    def step(self, r: TaskRecord) -> Step:
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
        frames = []
        for i in range(min(r.depth, len(r.frames))):
            try:
                frames.append(self.frames.frame_of(r.frames[i].code, r.frames[i].instr,
                                                   FRAME_KINDS[r.kinds[i] % 3]))
            except (DecodeError, ReadFault):
                break
        span = r.taken_ns - r.step_start_ns
        return Step(r.task, name, r.tid, r.step_start_ns, max(span - r.nested_ns, 0),
                    r.wake_delay_ns, _STATES.get(r.state, "suspended"), tuple(frames),
                    eager=bool(r.eager), nested_ns=min(r.nested_ns, span))


class TraceCommand:
    """Record every asyncio task step of PID: which task, on which thread, when, for how
    long, how long after its loop woke up, and the stack it suspended at.

    Steps are captured by uprobes on the C asyncio module's task step and wakeup points,
    in kernel space. Output is JSON lines on stdout, or with -o FILE.json a Chrome trace
    (open it in https://ui.perfetto.dev or chrome://tracing): one track per task (or per
    thread with --tracks thread), one slice per step. Ctrl-C ends the trace early.

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
            capture = Capture()
        except CaptureUnavailable as exc:
            raise errors.AiobpfError(f"cannot trace: {exc}", "see aiobpf doctor") from None
        stop = False

        def finish(_signo: int, _frame: object) -> None:
            nonlocal stop
            stop = True

        previous = {sig: signal.signal(sig, finish) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            attachment = capture.add(target, trace=True)
            if not attachment.active:
                raise errors.AiobpfError("cannot trace: " + "; ".join(attachment.notes),
                                         "see aiobpf doctor")
            decoder = _Decoder(target)
            unix_offset = time.time_ns() - time.monotonic_ns()
            steps: list[Step] = []
            emitted = 0

            deadline = time.monotonic() + args.duration

            def on_step(record: TaskRecord) -> None:
                nonlocal emitted, stop
                if stop or record.pid != target.pid:
                    return
                if record.step_start_ns > deadline_ns:
                    stop = True  # events can outpace a poll: end on time, drain the rest
                    capture.set_trace(target.pid, False)
                    return
                step = decoder.step(record)
                emitted += 1
                if args.output:
                    steps.append(step)
                    return
                try:
                    write_json_line(sys.stdout, step, target.pid, unix_offset)
                except BrokenPipeError:  # the reader (head, jq) has gone: end quietly
                    stop = True

            deadline_ns = int(deadline * 1e9)
            capture.on_steps(on_step)
            while not stop and time.monotonic() < deadline:
                capture.poll(100)
            capture.set_trace(target.pid, False)
            capture.poll(0)
            stats = capture.stats(target.pid)
            if args.output:
                args.output.write_text(json.dumps(chrome_trace(steps, target.pid, args.tracks)))
            lost = stats.events_lost if stats else 0
            print(f"aiobpf: traced {emitted} steps of process {target.pid}"
                  + (f" ({lost} lost: the ring buffer was full)" if lost else "")
                  + (f"; wrote {args.output}" if args.output else ""), file=sys.stderr)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            capture.close()
            target.close()
        return 0
