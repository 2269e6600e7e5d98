"""Task steps as JSON lines, or as a Chrome/Perfetto trace (the "JSON trace event
format": one complete event, ph "X", per step, on a track per task or per thread),
each ending with a summary of what the trace holds and misses.

Writers of ``Step`` values; the command that captures them is cli/trace.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Any

from aiobpf.collector.model import Frame


@dataclass(frozen=True, slots=True)
class Step:
    task: int
    name: str
    thread_id: int
    start_ns: int            # CLOCK_MONOTONIC
    duration_ns: int         # until the step ended (the next step or the loop's wait)
    wake_delay_ns: int       # from the loop waking to this step's start (0: unknown)
    state: str               # what the step left: suspended | finished | running | created
    frames: tuple[Frame, ...] = field(default=())   # where it suspended, outermost first


def step_dict(step: Step, pid: int, unix_offset_ns: int) -> dict[str, Any]:
    return {
        "type": "step",
        "pid": pid,
        "task": hex(step.task),
        "name": step.name,
        "thread_id": step.thread_id,
        "start_ns": step.start_ns,
        "start_unix_ns": step.start_ns + unix_offset_ns,
        "duration_ns": step.duration_ns,
        "wake_delay_ns": step.wake_delay_ns,
        "state": step.state,
        "frames": [{"name": f.name, "filename": f.filename, "line": f.line, "kind": f.kind}
                   for f in step.frames],
    }


def write_json_line(out: IO[str], step: Step, pid: int, unix_offset_ns: int) -> None:
    out.write(json.dumps(step_dict(step, pid, unix_offset_ns), ensure_ascii=False) + "\n")


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """What a trace holds and what it misses, written into the trace itself."""

    steps: int               # steps written
    events_lost: int         # step events the ring buffer had no room for (BPF's count)
    unmeasured: int          # steps left out: their thread's loop was not yet seen waiting

    def as_dict(self) -> dict[str, int]:
        return {"steps": self.steps, "events_lost": self.events_lost,
                "unmeasured_steps": self.unmeasured}


def write_json_summary(out: IO[str], summary: TraceSummary, pid: int) -> None:
    """The last JSON line: ``{"type": "summary", ...}``."""
    out.write(json.dumps({"type": "summary", "pid": pid, **summary.as_dict()}) + "\n")


class ChromeTrace:
    """A Chrome trace event document written to ``out`` step by step (never held in
    memory whole): one "X" event per step, in microseconds, on a track per task or per
    thread; the tracks' names and ``otherData`` (with the summary) come last."""

    def __init__(self, out: IO[str], pid: int, tracks: str = "task") -> None:
        self.out, self.pid, self.tracks = out, pid, tracks
        self.track_of: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.origin: int | None = None
        out.write('{"displayTimeUnit": "ms", "traceEvents": [\n')
        self._event({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                     "args": {"name": f"asyncio tasks of {pid}"}}, first=True)

    def _event(self, event: dict[str, Any], first: bool = False) -> None:
        self.out.write(("" if first else ",\n") + json.dumps(event, ensure_ascii=False))

    def add(self, step: Step) -> None:
        if self.origin is None:
            self.origin = step.start_ns
        key = step.task if self.tracks == "task" else step.thread_id
        track = self.track_of.setdefault(key, len(self.track_of) + 1)
        self.names[track] = (f"{step.name} ({step.task:#x})" if self.tracks == "task"
                             else f"thread {step.thread_id}")
        innermost = step.frames[-1] if step.frames else None
        self._event({
            "name": step.name,
            "cat": "step",
            "ph": "X",
            "ts": (step.start_ns - self.origin) / 1000,
            "dur": step.duration_ns / 1000,
            "pid": self.pid,
            "tid": track,
            "args": {
                "task": hex(step.task),
                "thread": step.thread_id,
                "wake_delay_us": step.wake_delay_ns / 1000,
                "left": step.state,
                "suspended_at": (f"{innermost.name} {innermost.filename}:{innermost.line}"
                                 if innermost else None),
                "stack": [f"{f.name} {f.filename}:{f.line}" for f in step.frames],
            },
        })

    def close(self, summary: TraceSummary) -> None:
        for track, name in self.names.items():
            self._event({"name": "thread_name", "ph": "M", "pid": self.pid, "tid": track,
                         "args": {"name": name}})
        other = {"producer": "aiobpf trace", "tracks": self.tracks, **summary.as_dict()}
        self.out.write('\n],\n"otherData": ' + json.dumps(other) + "}\n")
