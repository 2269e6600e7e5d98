"""What the subcommands share: the PID argument and taking a snapshot with clean errors."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiobpf import errors
from aiobpf.collector.model import Snapshot
from aiobpf.collector.snapshot import Collector
from aiobpf.collector.target import open_target
from aiobpf.errors.translate import translate_errors
from aiobpf.safe_text import bound, escape

# How ps and pstree show what a target named, and what they mark (their --help).
OUTPUT_NOTES = """Names come from the traced process and are not trusted: in the tree, the table and
CSV, control characters, separators and backslashes in task, function and file
names are escaped as Python's repr writes them (ESC as \\x1b, a newline as \\n, a
backslash as \\\\), bytes that are not UTF-8 show as U+FFFD, and a CSV field that
starts with = + - or @ gets a leading ' (spreadsheets would run it as a formula).
--format json keeps every name exact, except that a task name longer than 1024
characters is cut there (and ends in …).

Marks after a task's name in the tree and the table (CSV gives names only):
[running] the task was stepping when it was read (its stack is where it ran at
that moment, and may have moved since); [partial] part of it could not be read
consistently (--format json says why in the task's "errors"). A task without
marks is shown as CPython's tool shows it."""


# Options that ask for a reading of one's own (the daemon reads with the layout it found).
_HERE_NOT_DAEMON = "; the process is then read here, not through the daemon"


def pid_argument(parser: argparse.ArgumentParser, capture: bool = True) -> None:
    parser.add_argument("pid", type=parse_pid, metavar="PID", help="the process to read")
    parser.add_argument("--no-dwarf", action="store_true",
                        help="ignore the target's DWARF; use the offsets CPython publishes and "
                             "aiobpf's built-in tables (as for a stripped build)"
                             + _HERE_NOT_DAEMON * capture)
    parser.add_argument("--debug-dir", type=Path, action="append", default=[], metavar="DIR",
                        help="where to look for separate debug files of a stripped interpreter "
                             "(by build-id), before /usr/lib/debug in the target's root and "
                             "on the host; repeatable" + _HERE_NOT_DAEMON * capture)
    if not capture:
        return
    parser.add_argument("--capture", choices=("auto", "memory", "bpf"), default="auto",
                        help="where task records come from: memory (read the process now), "
                             "bpf (attach uprobes for --window seconds and take each task as "
                             "its last step left it, in kernel space), or auto (default: "
                             "memory, and bpf when a read tore because the process is busy, said "
                             "on stderr with the reason)")
    parser.add_argument("--window", type=float, default=0.3, metavar="SECONDS",
                        help="how long BPF capture watches steps before the read (default "
                             "0.3); through the daemon, for --capture bpf only (auto uses "
                             "the daemon's records as they are; a note says when the daemon "
                             "watches less than asked)")
    parser.add_argument("--no-daemon", action="store_true",
                        help="read the process here even if an aiobpf daemon traces it (by "
                             "default the daemon is asked first, over its socket: "
                             "$AIOBPF_SOCKET or /run/aiobpf/aiobpf.sock; for --capture bpf "
                             "it attaches its probes for --window seconds if they are off, "
                             "as its budget allows; when it cannot answer, one line on "
                             "stderr says why and the process is read here)")


def ask_daemon(args: argparse.Namespace, fmt: str) -> int | None:
    """Print the daemon's answer for ``args.pid`` and return the exit status; None when
    no daemon answers for the process (or options ask for a reading of one's own: said
    on stderr in one line when a daemon runs).  When the daemon cannot answer, its
    reason is said on stderr in one line."""
    if args.no_daemon:
        return None
    from aiobpf.daemon import dumps

    path = daemon_socket()
    if args.no_dwarf or args.debug_dir:
        if dumps.answers(path):   # the daemon reads with the layout it found: not these
            print(f"aiobpf: {_layout_options(args)} reads the process here, not through the "
                  "daemon", file=sys.stderr, flush=True)
        return None
    reply = dumps.request(path, {"pid": args.pid, "format": fmt, "capture": args.capture,
                                 "window": args.window})
    if reply is None or fell_back(reply, "reading the process here"):
        return None
    sys.stdout.write(reply.get("output", ""))
    for note in reply.get("notes", []):
        print(f"aiobpf: note: {escape(str(note))}", file=sys.stderr)
    if "error" in reply:
        raise daemon_error(reply)
    return 0


def daemon_socket() -> Path:
    """Where the daemon answers: $AIOBPF_SOCKET, else its default socket."""
    from aiobpf.daemon.config import DEFAULT_SOCKET

    return Path(os.environ.get("AIOBPF_SOCKET", DEFAULT_SOCKET))


def fell_back(reply: dict[str, Any], instead: str) -> bool:
    """Whether the daemon's ``reply`` says it could not answer; then its reason, and
    what is done ``instead``, are said on stderr in one line."""
    if "fallback" not in reply:
        return False
    why = bound(escape(str(reply["fallback"])), 300)
    print(f"aiobpf: the daemon did not answer ({why}): {instead}", file=sys.stderr, flush=True)
    return True


def daemon_error(reply: dict[str, Any]) -> errors.AiobpfError:
    """The error a daemon's ``reply`` reports, its text escaped and bounded (it may
    quote what a traced process named) and its exit status one of aiobpf's."""
    error = errors.AiobpfError(bound(escape(str(reply["error"])), 300),
                               bound(escape(str(reply.get("hint", ""))), 300))
    try:
        error.exit_code = int(reply.get("exit_code", errors.EXIT_ERROR))
    except (TypeError, ValueError):
        error.exit_code = errors.EXIT_ERROR
    return error


def _layout_options(args: argparse.Namespace) -> str:
    return " and ".join(option for option, given in (("--no-dwarf", args.no_dwarf),
                                                     ("--debug-dir", args.debug_dir)) if given)


def parse_pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a PID: {text!r}") from None
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"not a PID: {text!r}")
    return pid


def _with_capture(collector: Collector, window: float, details: bool,
                  first: Snapshot | None) -> Snapshot:
    """A snapshot whose busy tasks come from BPF records taken at their last suspension;
    without BPF, ``first`` (or a memory read) with a note saying why."""
    from aiobpf.bpf.capture import Capture  # the BPF loader: only when BPF is asked for
    from aiobpf.bpf.program import CaptureUnavailable

    target = collector.target
    try:
        capture = Capture()
    except CaptureUnavailable as exc:
        return _note(first or collector.snapshot(details=details), f"BPF capture is off: {exc}")
    try:
        attachment = capture.add(target)
        if not attachment.active:
            reason = "; ".join(attachment.notes) or "no probe sites"
            return _note(first or collector.snapshot(details=details),
                         f"BPF capture is off: {reason}")
        time.sleep(window)
        return collector.snapshot(details=details, records=capture.records(target.pid))
    finally:
        capture.close()


def _note(snapshot: Snapshot, note: str) -> Snapshot:
    snapshot.warnings.append(note)
    print(f"aiobpf: note: {escape(note)}; tasks were read from memory", file=sys.stderr)
    return snapshot


def escalation_reason(torn: int, snapshot: Snapshot) -> str:
    """Why ``--capture auto`` turns to BPF, in one line (names escaped and bounded)."""
    partial = [t for t in snapshot.tasks if t.errors]
    if partial:
        first = partial[0]
        why = bound(escape(f"{first.name}: {first.errors[0]}"), 200)
        return (f"{len(partial)} of {len(snapshot.tasks)} tasks could not be read whole "
                f"(e.g. {why})")
    return f"the process changed under the read ({torn} reads taken again)"


def take_snapshot(args: argparse.Namespace, *, details: bool = True) -> Snapshot:
    """One snapshot of ``args.pid``; every failure becomes an ``AiobpfError``."""
    mode = getattr(args, "capture", "memory")
    found = False
    try:
        with translate_errors(args.pid):
            target = open_target(args.pid, use_dwarf=not args.no_dwarf,
                                 debug_dirs=args.debug_dir)
            found = True
            collector = Collector(target)
            try:
                if mode == "bpf":
                    return _with_capture(collector, args.window, details, None)
                snapshot = collector.snapshot(details=details)
                if mode == "auto" and (snapshot.torn or any(t.errors for t in snapshot.tasks)):
                    # The process changed under the read: take busy tasks from BPF records.
                    print(f"aiobpf: {escalation_reason(snapshot.torn, snapshot)}: taking "
                          "busy tasks from BPF records (--capture bpf; --capture memory "
                          "keeps the memory read)", file=sys.stderr, flush=True)
                    return _with_capture(collector, args.window, details, snapshot)
                return snapshot
            finally:
                collector.close()
                target.close()
    except errors.ProcessNotFoundError:
        if found:  # it was there a moment ago
            raise errors.ProcessExitedError(args.pid) from None
        raise


@contextmanager
def stop_on_signals(second_interrupts: bool = False) -> Iterator[Callable[[], bool]]:
    """SIGINT and SIGTERM end a command's sampling or tracing gracefully: the callable
    yielded says whether one came (``second_interrupts``: a second one raises
    KeyboardInterrupt).  The previous handlers come back on the way out."""
    stop = False

    def finish(_signo: int, _frame: object) -> None:
        nonlocal stop
        if stop and second_interrupts:
            raise KeyboardInterrupt
        stop = True

    previous = {sig: signal.signal(sig, finish) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
