"""The JSON document of a snapshot (schema version 1, documented in the README).

Addresses are hex strings, as in the text output.  Frames are listed outermost
first (like a traceback); ``awaited_by`` names every awaiter, task or not.  Every
task id in the document (``running_task``, ``awaited_by`` entries with ``is_task``,
``cycles``) is the id of a task in ``tasks``; where a task the process named is not
there, the document says why (``running_task_note``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiobpf import __version__
from aiobpf.collector.model import Snapshot
from aiobpf.exporters.await_graph import cycles_of

SCHEMA_VERSION = 1


def document(snapshot: Snapshot) -> dict[str, Any]:
    names = {t.id: t.name for t in snapshot.tasks}
    return {
        "schema": SCHEMA_VERSION,
        "aiobpf": __version__,
        "pid": snapshot.pid,
        "python": {
            "version": snapshot.python_version,
            "build": snapshot.python_build,
            "executable": snapshot.executable,
        },
        "taken_at": datetime.fromtimestamp(snapshot.taken_at, UTC).isoformat(),
        "duration_s": round(snapshot.duration_s, 6),
        "capture": snapshot.capture,
        "threads": [
            {
                "thread_id": th.thread_id,
                "python_thread_id": th.python_thread_id,
                "interpreter_id": th.interpreter_id,
                "running_task": hex(th.running_task) if th.running_task else None,
                "running_task_note": th.running_note,
            }
            for th in snapshot.threads
        ],
        "tasks": [
            {
                "id": hex(t.id),
                "name": t.name,
                "thread_id": t.thread_id,
                "state": t.state,
                "source": t.source,
                "frames": [
                    {"name": f.name, "filename": f.filename, "line": f.line, "kind": f.kind}
                    for f in t.frames
                ],
                "awaits": t.awaits,
                "awaited_by": [
                    {
                        "id": hex(a.id),
                        "is_task": a.is_task,
                        "name": names.get(a.id) if a.is_task else a.type_name,
                    }
                    for a in t.awaited_by
                ],
                "errors": list(t.errors),
            }
            for t in snapshot.tasks
        ],
        "cycles": [[hex(tid) for tid in cycle] for cycle in cycles_of(snapshot)],
        "layout_sources": snapshot.layout_sources,
        "warnings": snapshot.warnings,
    }


def render(snapshot: Snapshot) -> str:
    return json.dumps(document(snapshot), indent=2, ensure_ascii=False) + "\n"
