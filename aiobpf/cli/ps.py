"""aiobpf ps: a table of every pending task, one row per awaiter."""

from __future__ import annotations

import argparse
import sys

from aiobpf.cli.common import ask_daemon, pid_argument, take_snapshot
from aiobpf.cli.output import render


class PsCommand:
    """List every pending asyncio task of PID: its thread, id and name, its coroutine
    stack (innermost first), and for each task awaiting it that task's stack, name and id.

    The columns are those of `python3.14 -m asyncio ps`; aiobpf reads every CPython
    from 3.11 to 3.15, every thread's tasks, and needs nothing from the target.

    Names come from the traced process and are not trusted: in the tree, the table and
    CSV, control characters, separators and backslashes in task, function and file
    names are escaped as Python's repr writes them (ESC as \\x1b, a newline as \\n, a
    backslash as \\\\), bytes that are not UTF-8 show as U+FFFD, and a CSV field that
    starts with = + - or @ gets a leading ' (spreadsheets would run it as a formula).
    --format json keeps every name exact, except that a task name longer than 1024
    characters is cut there (and ends in …).

    Marks after a task's name (in the table; CSV gives names only):
    [running] the task was stepping when it was read (its stack is where it ran at
    that moment, and may have moved since); [partial] part of it could not be read
    consistently (--format json says why in the task's "errors"). A task without
    marks is shown as CPython's tool shows it."""

    name = "ps"
    help = "table of pending tasks, their stacks and awaiters"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        pid_argument(parser)
        parser.add_argument("--format", choices=("table", "csv", "json"), default="table",
                            help="table (default, as python3.14 -m asyncio ps), csv, or json (the "
                                 "full snapshot: threads, states, frames with files and lines)")

    def run(self, args: argparse.Namespace) -> int:
        status = ask_daemon(args, args.format)
        if status is not None:
            return status
        snapshot = take_snapshot(args, details=args.format == "json")
        for chunk in render(snapshot, args.format):
            sys.stdout.write(chunk)
        return 0
