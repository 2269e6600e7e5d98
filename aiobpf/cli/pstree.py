"""aiobpf pstree: the await tree, with every task's internal coroutine stack."""

from __future__ import annotations

import argparse
import sys

from aiobpf.cli.common import OUTPUT_NOTES, ask_daemon, pid_argument, take_snapshot
from aiobpf.exporters.render import render


class PstreeCommand:
    """Draw the tree of asyncio tasks of PID: under each task the coroutine frames it is
    suspended in (outermost first, as "function file:line"), and under the frame that
    awaits them, the tasks it waits for. A task awaited by several tasks appears under each.

    If tasks await each other in a cycle, no tree can be drawn: the cycles are printed
    on stderr and aiobpf exits with status 1 (aiobpf ps still lists them)."""

    name = "pstree"
    notes = OUTPUT_NOTES
    help = "tree of tasks with their coroutine stacks"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        pid_argument(parser)
        parser.add_argument("--format", choices=("tree", "json"), default="tree",
                            help="tree (default) or json (the same document as ps --format json)")

    def run(self, args: argparse.Namespace) -> int:
        status = ask_daemon(args, args.format)
        if status is not None:
            return status
        snapshot = take_snapshot(args, details=args.format == "json")
        write = sys.stdout.write
        for chunk in render(snapshot, args.format):
            write(chunk)
        return 0
