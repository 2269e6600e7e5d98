"""The one decoder of capture records (abi.TaskRecord): the frames a record
captured, for a snapshot's task and a trace's step alike, and the steps of the
records ``aiobpf trace`` takes from the ring buffer.

A record holds addresses: code objects (which never change) are decoded from the
target's memory through the collector's readers.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import time
from collections import deque
from collections.abc import Callable, Iterator

from aiobpf.bpf.abi import (
    CAPTURE_CREATED,
    CAPTURE_FINISHED,
    CAPTURE_RUNNING,
    FRAME_KINDS,
    MAX_DEPTH,
    FrameRef,
    TaskRecord,
)
from aiobpf.collector.frames import Frames
from aiobpf.collector.memory import ReadFault, RemoteMemory
from aiobpf.collector.model import Frame, Step
from aiobpf.collector.objects import DecodeError, Objects
from aiobpf.collector.target import Target
from aiobpf.collector.tasks import task_name

_STATES = {CAPTURE_FINISHED: "finished", CAPTURE_RUNNING: "running", CAPTURE_CREATED: "created"}
_FRAMES_AT, _KINDS_AT = TaskRecord.frames.offset, TaskRecord.kinds.offset
_FRAME_SIZE = ct.sizeof(FrameRef)


def frame_kind(value: int) -> str:
    """The frame kind of an ``enum frame_kind`` byte (any byte names one)."""
    return FRAME_KINDS[value % len(FRAME_KINDS)]


def frames_of(record: TaskRecord, frames: Frames) -> Iterator[Frame]:
    """The frames ``record`` captured, outermost first, decoded one by one (a frame
    that cannot be decoded raises DecodeError or ReadFault when it is reached)."""
    for i in range(min(record.depth, MAX_DEPTH)):
        ref = record.frames[i]
        yield frames.frame_of(ref.code, ref.instr, frame_kind(record.kinds[i]))


class StepDecoder:
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
            frames = self.stacks[key] = self._frames(r)
        span = r.taken_ns - r.step_start_ns
        return Step(r.task, name, r.tid, r.step_start_ns, max(span - r.nested_ns, 0),
                    r.wake_delay_ns, _STATES.get(r.state, "suspended"), frames,
                    eager=bool(r.eager), nested_ns=min(r.nested_ns, span))

    def _frames(self, r: TaskRecord) -> tuple[Frame, ...]:
        """The frames decoded before the first that cannot be."""
        frames: list[Frame] = []
        with contextlib.suppress(DecodeError, ReadFault):
            frames.extend(frames_of(r, self.frames))
        return tuple(frames)


class StepEvents:
    """The step events of one traced process, from ring-buffer bytes to written steps.

    A step is written only once its thread's loop has been seen waiting (its wake
    delay is known): until then the programs cannot tell where a step ends if the
    loop waited in between (the syscall hooks had not seen a wait yet), so such a step
    may have absorbed I/O waits. Those steps are counted (``unmeasured``), not written.
    An eager first step is always written: Task.__init__'s probes bracket it (and its
    record comes before the one of the step it ran in, which ends later).
    """

    def __init__(self, decoder: StepDecoder, pid: int, end_ns: int,
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
