"""ps and pstree import only what reading a process needs: not the BPF loader, the
daemon or TLS (their start-up counts in every dump); the others are listed all the same."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

UNNEEDED = ("aiobpf.bpf.capture", "aiobpf.bpf.program", "aiobpf.cli.trace", "aiobpf.cli.daemon",
            "aiobpf.daemon.service", "aiobpf.daemon.metrics_server", "ssl", "curses")
# The command line, then the modules it imported.
_RUN = """
import contextlib, io, json, sys
from aiobpf.cli import main
with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
    main(sys.argv[1:])
print(json.dumps(sorted(sys.modules)))
"""


def _imported(*argv: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _RUN, *argv], capture_output=True, text=True,
                         check=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("command", ["pstree", "ps"])
def test_a_dump_imports_neither_bpf_nor_the_daemon(command: str) -> None:
    imported = _imported(command, "--help")
    assert f"aiobpf.cli.{command}" in imported
    assert imported.isdisjoint(UNNEEDED), sorted(imported & set(UNNEEDED))


def test_the_full_help_still_lists_every_command() -> None:
    from aiobpf.cli import COMMANDS

    text = subprocess.run([sys.executable, "-m", "aiobpf", "--help"], capture_output=True,
                          text=True, check=True).stdout
    assert all(f"\n    {c.name} " in text for c in COMMANDS)
