"""The output of ps and pstree from a snapshot, in pieces: written by the CLI as they
come, and sent by the daemon over its dump socket.

Every format is safe to print on a terminal: tree, table and CSV escape what the
target named (``exporters.text``); JSON keeps every name exact, with the characters
a terminal could act on (and lone surrogates) written as ``\\uNNNN`` escapes."""

from __future__ import annotations

from collections.abc import Iterator

from aiobpf import errors
from aiobpf.collector.model import Snapshot
from aiobpf.exporters import json_doc, text
from aiobpf.safe_text import json_exact

FORMATS = ("tree", "table", "csv", "json")


def render(snapshot: Snapshot, fmt: str) -> Iterator[str]:
    """The text of ``fmt`` for ``snapshot``.  Raises ``AiobpfError`` when there is
    nothing to show (after the JSON document, which shows it) or the tasks await
    each other in a cycle (no tree can be drawn)."""
    if fmt == "json":
        yield json_exact(json_doc.render(snapshot))
        require_tasks(snapshot)
        return
    require_tasks(snapshot)
    if fmt == "tree":
        try:
            batches = text.tree_batches(snapshot)
        except text.CycleFound as exc:
            raise errors.AwaitCycleError(exc.lines) from None
        # Written about a thousand lines at a time: a million tasks make five million.
        for batch in batches:
            batch.append("")         # the last line's end, without copying the text again
            yield "\n".join(batch)
        return
    rows = text.table_rows(snapshot, marks=fmt == "table")   # CSV: names only
    yield text.render_table(rows) if fmt == "table" else text.render_csv(rows)


def require_tasks(snapshot: Snapshot) -> None:
    if not snapshot.tasks:
        raise errors.NoTasksError(snapshot.pid, snapshot.python_version)
