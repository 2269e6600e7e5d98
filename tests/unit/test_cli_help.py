"""Each command's --help reads as written: its description is not indented by the
docstring's indentation (only example lines are)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aiobpf.cli import COMMANDS

EXAMPLE_STARTS = ("sudo ", "aiobpf ", "curl ")


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_descriptions_are_not_indented(name: str) -> None:
    text = subprocess.run([sys.executable, "-m", "aiobpf", name, "--help"],
                          capture_output=True, text=True, check=True).stdout
    description = text.split("\n\n", 1)[1].split("\noptions:", 1)[0]
    indented = [line for line in description.splitlines()
                if line.startswith("   ") and not line.lstrip().startswith(EXAMPLE_STARTS)]
    assert not indented, "\n".join(indented)
