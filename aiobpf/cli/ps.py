"""aiobpf ps: a table of every pending task, one row per awaiter."""

from __future__ import annotations

import argparse
import sys

from aiobpf.cli.common import OUTPUT_NOTES, ask_daemon, pid_argument, take_snapshot
from aiobpf.exporters.render import render


class PsCommand:
    """List every pending asyncio task of PID: its thread, id and name, its coroutine
    stack (innermost first), and for each task awaiting it that task's stack, name and id.

    The columns are those of `python3.14 -m asyncio ps`; aiobpf reads every CPython
    from 3.11 to 3.15, every thread's tasks, and needs nothing from the target."""

    name = "ps"
    notes = OUTPUT_NOTES
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
