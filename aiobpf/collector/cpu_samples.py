"""CPU samples named: the frames a thread was executing, and the task they ran for.

The profiler's program (aiobpf.bpf.profile) sends frames as addresses: a code object
and an instruction per interpreter frame, innermost first.  Here they become
``Frame``s (qualname, file, line), and the running task is found without any probe
on the task's steps: a task's coroutine runs in an interpreter frame embedded in the
coroutine object, so the outermost frame of the sample that is some task's
coroutine frame marks both the task and where its frames begin (outside it: the
event loop).  The map from coroutine frames to tasks comes from the memory reads of
the task list (``refresh``): a task created and finished between two reads is not
found, and its sample counts under its thread."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aiobpf.bpf.profile import NO_CFRAME, CpuProfiler, ProfileConfig, RawSample
from aiobpf.collector.interpreter import interpreters, thread_states
from aiobpf.collector.memory import ProcessGone, ReadFault
from aiobpf.collector.model import Frame, Snapshot
from aiobpf.collector.objects import DecodeError
from aiobpf.collector.procfs import ProcessNotFound
from aiobpf.collector.snapshot import Collector

UNREADABLE = Frame("<frame not readable>", "", 0, "function")
POLL_MS = 50   # the ring buffer is read this often
GONE = (ProcessGone, ProcessNotFound)


@dataclass(frozen=True)
class NamedSample:
    """A sample's frames named, innermost first, each with its frame's address."""

    tid: int
    time_ns: int
    frames: tuple[tuple[int, Frame], ...]
    truncated: bool


@dataclass(frozen=True)
class CpuSample:
    """What a thread was executing: its frames, outermost first, from the running
    task's coroutine inwards (``task``: that task's id) or, outside any task
    (``task`` 0), from the thread's first Python frame."""

    tid: int
    time_ns: int
    task: int
    frames: tuple[Frame, ...]
    truncated: bool = False


def profile_config(collector: Collector) -> ProfileConfig:
    """Where the profiler's program finds a thread's frames in this target's Python."""
    L = collector.target.layout.values
    frames = collector.frames
    direct = "tstate.current_frame" in L
    return ProfileConfig(
        tstate_frame=L["tstate.current_frame"] if direct else L["tstate.cframe"],
        cframe_frame=NO_CFRAME if direct else L["cframe.current_frame"],
        frame_previous=frames.f_prev, frame_code=frames.f_code, frame_instr=frames.f_instr,
        frame_owner=frames.f_owner, frame_span=frames.frame_span,
        ref_clear=frames.ref_clear & (2**64 - 1))


class SampleNamer:
    """Names the samples of one process (``collector``'s target)."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.snapshot: Snapshot | None = None
        self._task_of_frame: dict[int, int] = {}   # coroutine frame -> task id
        self._previous: dict[int, int] = {}        # ... as the read before found them

    def threads(self) -> dict[int, int]:
        """The process's Python threads now: native id -> PyThreadState."""
        objs = self.collector.objs
        objs.mem.clear()
        runtime = self.collector.target.runtime_addr
        return {ts.native_id: ts.addr for interp in interpreters(objs, runtime)
                for ts in thread_states(objs, interp)}

    def refresh(self) -> Snapshot:
        """Read the task list: names, awaiters, and where each task's coroutine runs
        (its frame is embedded in the coroutine object the read found)."""
        snapshot = self.collector.snapshot(details=False)
        iframe_of = self.collector.frames.iframe_of
        by_frame = {iframe_of(task.coro): task.id for task in snapshot.tasks if task.coro}
        # The previous read's tasks too: samples taken before this read may belong to a
        # task that finished meanwhile (this read's tasks win where a frame was reused).
        self._previous, self._task_of_frame = self._task_of_frame, by_frame
        self.snapshot = snapshot
        return snapshot

    def named(self, raw: RawSample) -> NamedSample:
        """The sample's frames named now, while the process (its code objects) is there;
        frames that are the interpreter's own (shims, C entry frames) are left out."""
        frames = self.collector.frames
        out: list[tuple[int, Frame]] = []
        for f in raw.frames:
            if f.owner in frames.skip_owners:
                continue
            kind = "coroutine" if f.owner == frames.owned_by_gen else "function"
            try:
                out.append((f.frame, frames.frame_of(f.code, f.instr, kind)))
            except (ReadFault, DecodeError, ProcessGone):
                out.append((f.frame, UNREADABLE))
        if raw.unreadable:
            out.append((0, UNREADABLE))
        return NamedSample(raw.tid, raw.time_ns, tuple(out), raw.truncated)

    def attribute(self, sample: NamedSample) -> CpuSample:
        """The task the sample ran for (its outermost frame that is a task's coroutine
        frame), and its frames from there inwards, outermost first."""
        start, task = len(sample.frames), 0
        for i in range(len(sample.frames) - 1, -1, -1):
            address = sample.frames[i][0]
            found = self._task_of_frame.get(address) or self._previous.get(address)
            if found:
                start, task = i + 1, found
                break
        frames = tuple(frame for _, frame in reversed(sample.frames[:start]))
        return CpuSample(sample.tid, sample.time_ns, task, frames, sample.truncated)


@dataclass
class Batch:
    """Samples attributed together: with the snapshot they were attributed with, and
    the one before it (a task may have finished since)."""

    snapshot: Snapshot
    previous: Snapshot | None
    samples: list[CpuSample]


class ProcessSamples:
    """One process's samples from a profiler that may serve others too: named as they
    arrive (``receive``, from the profiler's callback), and attributed to their tasks
    by ``attribute``, which reads the task list again and follows the process's
    threads (new ones sampled, gone ones not).  ``aiobpf profile``/``top``
    (``CpuSampling``) and the daemon's continuous profiles run the same loop."""

    def __init__(self, collector: Collector, profiler: CpuProfiler, rate_hz: float,
                 max_pending: int | None = None) -> None:
        self.namer = SampleNamer(collector)
        self.profiler = profiler
        self.pid = collector.target.pid
        self.rate_hz = rate_hz
        self.max_pending = max_pending
        self.config = profile_config(collector)
        self.pending: list[NamedSample] = []
        self.snapshot: Snapshot | None = None
        self.gone: Exception | None = None   # the process exited: why the last batch was

    def receive(self, raw: RawSample) -> None:
        """Name a sample now, while the process (its code objects) is there."""
        if self.max_pending is None or len(self.pending) < self.max_pending:
            self.pending.append(self.namer.named(raw))

    def follow(self) -> None:
        self.profiler.follow(self.pid, self.config, self.namer.threads(), self.rate_hz)

    def attribute(self, read: bool = True) -> Batch:
        """The samples received so far, attributed with a fresh read of the task list
        (which also follows the threads; ``read=False``: with the last read, as the
        process is let go).  When the process exited, with the last read, and ``gone``
        says so; when the read failed otherwise (it tore), the samples wait for the
        next call and the error is raised."""
        previous = self.snapshot
        if read or previous is None:
            try:
                snapshot = self.namer.refresh()
                self.follow()
            except GONE as exc:
                if previous is None:
                    raise
                self.gone = exc
            else:
                self.snapshot = snapshot
        if self.snapshot is previous:   # not read again: the last read alone
            previous = None
        assert self.snapshot is not None
        pending, self.pending = self.pending, []
        return Batch(self.snapshot, previous, [self.namer.attribute(s) for s in pending])


class CpuSampling:
    """A CPU profile of one process in progress: the profiler's program samples its
    threads; each sample's frames are named as it arrives (``POLL_MS``); every
    ``refresh_s`` the task list is read again and the samples since are attributed to
    their tasks.  ``batches`` yields them; when the process exits, the samples it left
    are yielded before the error is raised."""

    def __init__(self, collector: Collector, rate_hz: float, refresh_s: float = 1.0) -> None:
        self.rate_hz = rate_hz
        self.refresh_s = refresh_s
        self.profiler = CpuProfiler(lambda raw: self.process.receive(raw))
        self.process = ProcessSamples(collector, self.profiler, rate_hz)

    def batches(self, duration_s: float, stopped: Callable[[], bool],
                started: Callable[[int], None] = lambda threads: None) -> Iterator[Batch]:
        """The batches, until ``duration_s`` passed or ``stopped()``; ``started`` is
        told how many threads are sampled once sampling began."""
        self.process.attribute()   # the tasks and threads as sampling begins
        started(self.profiler.threads)
        end = time.monotonic() + duration_s
        while True:
            due = min(time.monotonic() + self.refresh_s, end)
            while time.monotonic() < due and not stopped():
                self.profiler.poll(POLL_MS)
            done = stopped() or time.monotonic() >= end
            self.profiler.poll(0)
            yield self.process.attribute()
            if self.process.gone is not None:
                raise self.process.gone
            if done:
                return

    def close(self) -> None:
        self.profiler.close()
