"""What the subcommands share: the PID argument and taking a snapshot with clean errors."""

from __future__ import annotations

import argparse
from pathlib import Path

from aiobpf import errors
from aiobpf.collector import procfs
from aiobpf.collector.layouts import LayoutError
from aiobpf.collector.memory import ProcessGone, ReadDenied, RemoteReadError
from aiobpf.collector.model import Snapshot
from aiobpf.collector.objects import DecodeError
from aiobpf.collector.snapshot import Collector
from aiobpf.collector.target import NoAsyncio, NotPython, UnsupportedPython, open_target


def pid_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=_pid, metavar="PID", help="the process to read")
    parser.add_argument("--no-dwarf", action="store_true",
                        help="ignore the target's DWARF; use the offsets CPython publishes and "
                             "aiobpf's built-in tables (as for a stripped build)")
    parser.add_argument("--debug-dir", type=Path, action="append", default=[], metavar="DIR",
                        help="where to look for separate debug files of a stripped interpreter "
                             "(by build-id), before /usr/lib/debug in the target's root and "
                             "on the host; repeatable")


def _pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a PID: {text!r}") from None
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"not a PID: {text!r}")
    return pid


def take_snapshot(args: argparse.Namespace, *, details: bool = True) -> Snapshot:
    """One snapshot of ``args.pid``; every failure becomes an ``AiobpfError``."""
    pid = args.pid
    stage = "find"
    try:
        target = open_target(pid, use_dwarf=not args.no_dwarf, debug_dirs=args.debug_dir)
        stage = "read"
        collector = Collector(target)
        try:
            return collector.snapshot(details=details)
        finally:
            collector.close()
            target.close()
    except procfs.ProcessNotFound:
        if stage == "find":
            raise errors.ProcessNotFoundError(pid) from None
        raise errors.ProcessExitedError(pid) from None
    except ProcessGone:
        raise errors.ProcessExitedError(pid) from None
    except (ReadDenied, PermissionError):
        raise errors.PermissionDeniedError(pid) from None
    except NotPython as exc:
        raise errors.NotPythonError(str(exc)) from None
    except UnsupportedPython as exc:
        raise errors.UnsupportedPythonError(str(exc)) from None
    except NoAsyncio as exc:
        raise errors.NoAsyncioError(str(exc)) from None
    except (RemoteReadError, DecodeError, LayoutError) as exc:
        if not procfs.exists(pid):
            raise errors.ProcessExitedError(pid) from None
        raise errors.AiobpfError(
            f"could not read the asyncio state of process {pid}: {exc}",
            "if the program is changing fast, try again; otherwise please report it with the "
            "output of: aiobpf doctor") from None


def require_tasks(snapshot: Snapshot) -> None:
    if not snapshot.tasks:
        raise errors.NoTasksError(snapshot.pid, snapshot.python_version)
