"""The aiobpf command line: one class per subcommand, its docstring is its --help."""

from __future__ import annotations

import argparse
import gc
import importlib
import inspect
import os
import sys
import traceback
from typing import NamedTuple, Protocol

from aiobpf import __version__, errors
from aiobpf.safe_text import escape, terminal_lines

DESCRIPTION = """\
See every asyncio task of a running CPython 3.11-3.15 process: where inside its own
coroutines each task is suspended, and which task awaits it. The target needs no
change, no restart and no cooperation; aiobpf only reads its memory (as root, or
with CAP_SYS_PTRACE).

examples:
  sudo aiobpf pstree 1234          tree of tasks with their coroutine stacks
  sudo aiobpf ps 1234              table: one row per task and awaiter
  sudo aiobpf ps 1234 --format json
  sudo aiobpf trace 1234 -o t.json every task step for 10 s, as a Perfetto trace
  sudo aiobpf profile 1234 -o p.html  where tasks spend their CPU, as a flame graph
  sudo aiobpf top 1234             live: tasks by CPU share, and where tasks wait
  sudo aiobpf exporter --pid 1234  Prometheus metrics of one process
  sudo aiobpf daemon               every asyncio process of the host: metrics, dumps
  aiobpf doctor                    check this host for what aiobpf needs

exit status: 0 ok, 1 error, 2 usage, 3 not a supported Python, 4 nothing to show
(no asyncio, no tasks), 77 permission denied.
"""


class Command(Protocol):
    name: str
    help: str

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class CommandModule(NamedTuple):
    """A subcommand, named without importing it: a command imports only what it runs
    (``aiobpf pstree`` neither the BPF loader nor the daemon)."""

    name: str
    module: str   # in aiobpf.cli
    cls: str
    # Reads a process once and exits: runs without Python's cyclic garbage collector
    # (a big read makes millions of objects and no cycles; the collector's passes over
    # them cost a sixth of a 100k-task pstree).
    one_shot: bool = False

    def load(self) -> Command:
        return getattr(importlib.import_module(f"aiobpf.cli.{self.module}"), self.cls)()


COMMANDS = (CommandModule("pstree", "pstree", "PstreeCommand", one_shot=True),
            CommandModule("ps", "ps", "PsCommand", one_shot=True),
            CommandModule("trace", "trace", "TraceCommand"),
            CommandModule("profile", "profile", "ProfileCommand"),
            CommandModule("top", "top", "TopCommand"),
            CommandModule("exporter", "daemon", "ExporterCommand"),
            CommandModule("daemon", "daemon", "DaemonCommand"),
            CommandModule("doctor", "doctor", "DoctorCommand"))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command; when ``argv`` starts with a command's name, of that
    command alone (the others are neither imported nor shown: only the top-level
    --help and usage errors list them)."""
    parser = argparse.ArgumentParser(prog="aiobpf", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"aiobpf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    named = [c for c in COMMANDS if argv and c.name == argv[0]]
    for spec in named or COMMANDS:
        command = spec.load()
        p = sub.add_parser(command.name, help=command.help,
                           description="\n\n".join(filter(None, (
                               inspect.cleandoc(type(command).__doc__ or ""),
                               getattr(command, "notes", "")))),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.prepare_parser(p)
        p.set_defaults(handler=command, one_shot=spec.one_shot)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(argv).parse_args(argv)
    if args.one_shot:
        gc.disable()
    try:
        return args.handler.run(args)
    except errors.AiobpfError as exc:
        sys.stdout.flush()
        print(terminal_lines(exc.render()), file=sys.stderr)   # may quote target names
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if os.environ.get("AIOBPF_DEBUG"):
            traceback.print_exc()
        print(f"aiobpf: internal error: {type(exc).__name__}: {escape(str(exc))}\n"
              "  please report it; AIOBPF_DEBUG=1 prints the traceback", file=sys.stderr)
        return errors.EXIT_ERROR
    finally:
        if args.one_shot:
            gc.enable()
