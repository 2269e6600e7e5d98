"""Task steps as JSON lines, or as a Chrome/Perfetto trace (the "JSON trace event
format": one complete event, ph "X", per step, on a track per task or per thread),
each ending with a summary of what the trace holds and misses.

An eager task's first step (3.12+: run by ``Task.__init__``, inside the step that
created the task) is a step of its own, marked ``eager``; the step it ran inside
does not count its time: ``duration_ns`` is a step's own time, ``nested_ns`` the
time of the eager steps inside it.  In a Chrome trace a slice spans the whole step
(``dur``: its own time and the nested one), so on a thread's track eager steps
show nested under the step that started them; ``args.own_us`` is its own time.

Writers of ``Step`` values (collector/model.py), which bpf/records.py decodes and
cli/trace.py captures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import IO, Any

from aiobpf.collector.model import Frame, Step


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """What a trace holds and what it misses, written into the trace itself."""

    steps: int               # steps written
    events_lost: int         # step events the ring buffer had no room for (BPF's count)
    unmeasured: int          # steps left out: their thread's loop was not yet seen waiting

    def as_dict(self) -> dict[str, int]:
        return {"steps": self.steps, "events_lost": self.events_lost,
                "unmeasured_steps": self.unmeasured}


class JsonLines:
    """Steps as JSON lines on ``out``, one ``{"type": "step", ...}`` object a line, and
    a last ``{"type": "summary", ...}`` line."""

    def __init__(self, out: IO[str], pid: int, unix_offset_ns: int) -> None:
        self.out, self.pid, self.unix_offset_ns = out, pid, unix_offset_ns
        self.name_json: dict[str, str] = {}
        self.frames_json: dict[tuple[Frame, ...], str] = {}

    def add(self, step: Step) -> None:
        name = self.name_json.get(step.name)
        if name is None:
            name = self.name_json[step.name] = json.dumps(step.name, ensure_ascii=False)
        frames = self.frames_json.get(step.frames)
        if frames is None:
            frames = self.frames_json[step.frames] = json.dumps(
                [{"name": f.name, "filename": f.filename, "line": f.line, "kind": f.kind}
                 for f in step.frames], ensure_ascii=False)
        # what json.dumps would write, from cached parts
        self.out.write(
            f'{{"type": "step", "pid": {self.pid}, "task": "{step.task:#x}", "name": {name}, '
            f'"thread_id": {step.thread_id}, "start_ns": {step.start_ns}, '
            f'"start_unix_ns": {step.start_ns + self.unix_offset_ns}, '
            f'"duration_ns": {step.duration_ns}, "wake_delay_ns": {step.wake_delay_ns}, '
            f'"state": "{step.state}", "eager": {"true" if step.eager else "false"}, '
            f'"nested_ns": {step.nested_ns}, "frames": {frames}}}\n')

    def close(self, summary: TraceSummary) -> None:
        self.out.write(json.dumps({"type": "summary", "pid": self.pid, **summary.as_dict()})
                       + "\n")


def _stack_json(frames: tuple[Frame, ...]) -> str:
    """The "suspended_at" and "stack" members of a step's args, as JSON text."""
    innermost = frames[-1] if frames else None
    return json.dumps({
        "suspended_at": (f"{innermost.name} {innermost.filename}:{innermost.line}"
                         if innermost else None),
        "stack": [f"{f.name} {f.filename}:{f.line}" for f in frames],
    }, ensure_ascii=False)[1:-1]


class ChromeTrace:
    """A Chrome trace event document written to ``out`` step by step (never held in
    memory whole): one "X" event per step, in microseconds, on a track per task or per
    thread; the tracks' names and ``otherData`` (with the summary) come last."""

    def __init__(self, out: IO[str], pid: int, tracks: str = "task") -> None:
        self.out, self.pid, self.tracks = out, pid, tracks
        self.track_of: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.origin: int | None = None
        # JSON text by task name and by stack: most steps repeat both
        self.name_json: dict[str, str] = {}
        self.stack_json: dict[tuple[Frame, ...], str] = {}
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
                             else f"thread {step.thread_id}")   # a task's latest name
        name = self.name_json.get(step.name)
        if name is None:
            name = self.name_json[step.name] = json.dumps(step.name, ensure_ascii=False)
        stack = self.stack_json.get(step.frames)
        if stack is None:
            stack = self.stack_json[step.frames] = _stack_json(step.frames)
        # what json.dumps would write, from cached parts (floats: repr, as json does)
        self.out.write(
            f',\n{{"name": {name}, "cat": "step", "ph": "X", '
            f'"ts": {(step.start_ns - self.origin) / 1000!r}, '
            f'"dur": {(step.duration_ns + step.nested_ns) / 1000!r}, '
            f'"pid": {self.pid}, "tid": {track}, "args": {{"task": "{step.task:#x}", '
            f'"thread": {step.thread_id}, "wake_delay_us": {step.wake_delay_ns / 1000!r}, '
            f'"left": "{step.state}", "eager": {"true" if step.eager else "false"}, '
            f'"own_us": {step.duration_ns / 1000!r}, {stack}}}}}')

    def close(self, summary: TraceSummary) -> None:
        for track, name in self.names.items():
            self._event({"name": "thread_name", "ph": "M", "pid": self.pid, "tid": track,
                         "args": {"name": name}})
        other = {"producer": "aiobpf trace", "tracks": self.tracks, **summary.as_dict()}
        self.out.write('\n],\n"otherData": ' + json.dumps(other) + "}\n")
