"""A time limit on examining a target's files, checked cooperatively.

Parsing ELF and DWARF of a hostile file must not run for ever: the loops of
``elf``, ``dwarf``, ``probes`` and the layout cache call ``check()``, which raises
``Overrun`` once the limit set by ``limit()`` (per thread) has passed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


class Overrun(Exception):
    """Examining a process's files took longer than allowed."""


@contextmanager
def limit(seconds: float | None) -> Iterator[None]:
    """Bound the examinations this thread runs inside the block (None: no bound)."""
    before = getattr(_local, "deadline", None)
    if seconds is not None:
        mine = time.monotonic() + seconds
        _local.deadline = mine if before is None else min(before, mine)
    try:
        yield
    finally:
        _local.deadline = before


def check() -> None:
    deadline = getattr(_local, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise Overrun("examining the process's files took too long")
