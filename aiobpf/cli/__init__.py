"""The aiobpf command line: one class per subcommand, its docstring is its --help."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import traceback
from typing import Protocol

from aiobpf import __version__, errors
from aiobpf.cli.daemon import DaemonCommand, ExporterCommand
from aiobpf.cli.doctor import DoctorCommand
from aiobpf.cli.profile import ProfileCommand
from aiobpf.cli.ps import PsCommand
from aiobpf.cli.pstree import PstreeCommand
from aiobpf.cli.top import TopCommand
from aiobpf.cli.trace import TraceCommand
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


COMMANDS: tuple[Command, ...] = (PstreeCommand(), PsCommand(), TraceCommand(), ProfileCommand(),
                                 TopCommand(), ExporterCommand(), DaemonCommand(),
                                 DoctorCommand())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiobpf", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"aiobpf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help,
                           description="\n\n".join(filter(None, (
                               inspect.cleandoc(type(command).__doc__ or ""),
                               getattr(command, "notes", "")))),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.prepare_parser(p)
        p.set_defaults(handler=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
