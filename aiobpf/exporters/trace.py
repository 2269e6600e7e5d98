"""Task steps as JSON lines, or as a Chrome/Perfetto trace (the "JSON trace event
format": one complete event, ph "X", per step, on a track per task or per thread).

An eager task's first step (3.12+: run by ``Task.__init__``, inside the step that
created the task) is a step of its own, marked ``eager``; the step it ran inside
does not count its time: ``duration_ns`` is a step's own time, ``nested_ns`` the
time of the eager steps inside it.  In a Chrome trace a slice spans the whole step
(``dur``: its own time and the nested one), so on a thread's track eager steps
show nested under the step that started them; ``args.own_us`` is its own time.

Pure functions of ``Step`` values; the command that captures them is cli/trace.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from aiobpf.collector.model import Frame


@dataclass(frozen=True, slots=True)
class Step:
    task: int
    name: str
    thread_id: int
    start_ns: int            # CLOCK_MONOTONIC
    duration_ns: int         # its own time: until it ended (the next step or the loop's
                             # wait), less the eager steps that ran inside it
    wake_delay_ns: int       # from the loop waking to this step's start (0: unknown)
    state: str               # what the step left: suspended | finished | running | created
    frames: tuple[Frame, ...] = field(default=())   # where it suspended, outermost first
    eager: bool = False      # an eager first step, run inside another step
    nested_ns: int = 0       # eager steps of other tasks that ran inside this one


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
        "eager": step.eager,
        "nested_ns": step.nested_ns,
        "frames": [{"name": f.name, "filename": f.filename, "line": f.line, "kind": f.kind}
                   for f in step.frames],
    }


def write_json_line(out: IO[str], step: Step, pid: int, unix_offset_ns: int) -> None:
    out.write(json.dumps(step_dict(step, pid, unix_offset_ns), ensure_ascii=False) + "\n")


def chrome_trace(steps: Iterable[Step], pid: int, tracks: str = "task") -> dict[str, Any]:
    """The Chrome trace event document: one "X" event per step, microseconds."""
    events: list[dict[str, Any]] = []
    track_of: dict[int, int] = {}
    names: dict[int, str] = {}
    origin = None
    for step in steps:
        if origin is None:
            origin = step.start_ns
        key = step.task if tracks == "task" else step.thread_id
        track = track_of.setdefault(key, len(track_of) + 1)
        names[track] = (f"{step.name} ({step.task:#x})" if tracks == "task"
                        else f"thread {step.thread_id}")
        innermost = step.frames[-1] if step.frames else None
        events.append({
            "name": step.name,
            "cat": "step",
            "ph": "X",
            "ts": (step.start_ns - origin) / 1000,
            "dur": (step.duration_ns + step.nested_ns) / 1000,
            "pid": pid,
            "tid": track,
            "args": {
                "task": hex(step.task),
                "thread": step.thread_id,
                "wake_delay_us": step.wake_delay_ns / 1000,
                "left": step.state,
                "eager": step.eager,
                "own_us": step.duration_ns / 1000,
                "suspended_at": (f"{innermost.name} {innermost.filename}:{innermost.line}"
                                 if innermost else None),
                "stack": [f"{f.name} {f.filename}:{f.line}" for f in step.frames],
            },
        })
    meta: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
         "args": {"name": f"asyncio tasks of {pid}"}},
    ]
    meta += [{"name": "thread_name", "ph": "M", "pid": pid, "tid": track, "args": {"name": name}}
             for track, name in names.items()]
    return {"traceEvents": meta + events, "displayTimeUnit": "ms",
            "otherData": {"producer": "aiobpf trace", "tracks": tracks}}
