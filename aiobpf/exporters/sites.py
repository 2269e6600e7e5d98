"""Await sites: the frame of a suspended task's stack that says where it waits, as
``aiobpf_suspended_tasks{site}`` names it.

Frames of the standard library never name a site: the code that called them does.
Which of the other frames count as library code is the daemon's ``site_frames``
setting: ``"application"`` (the default) counts installed packages, i.e. any file under
a ``site-packages/`` or ``dist-packages/`` directory in any root (the target may run in
a container; paths are the target's own); ``"library"`` counts none; a list of regular
expressions counts the files that any of them matches.  A task is named by its
innermost frame that is not library code, else (it waits inside a library, called by
nothing of the application: an idle connection of a server, say) by its innermost
frame outside the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from aiobpf.collector.model import Frame, Task
from aiobpf.safe_text import SITE_MAX, label

_STDLIB = re.compile(r"/lib/python3\.\d+[a-z]*/(?!site-packages/|dist-packages/)|^<frozen ")
INSTALLED = r"/(?:site|dist)-packages/"
SITE_FRAMES: dict[str, tuple[str, ...]] = {"application": (INSTALLED,), "library": ()}
APPLICATION = re.compile(INSTALLED)


def library_pattern(site_frames: str | Sequence[str]) -> re.Pattern[str] | None:
    """What the ``site_frames`` setting counts as library code: a pattern searched in
    frames' file names (None: nothing).  Raises KeyError for an unknown name and
    re.error for a bad expression."""
    patterns = SITE_FRAMES[site_frames] if isinstance(site_frames, str) else site_frames
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns))


MAX_FRAMES = 1 << 16   # frame objects one ``Sites`` remembers
_STDLIB_KIND, _LIBRARY_KIND, _APPLICATION_KIND = 0, 1, 2


class Sites:
    """``await_site`` for many tasks: what it learns of each frame object (its kind and
    its label) is kept.  Tasks suspended at one place share their frame objects, so a
    read of 100,000 tasks classifies and labels a few frames, not 100,000."""

    def __init__(self, library: re.Pattern[str] | None = APPLICATION) -> None:
        self.library = library
        self._known: dict[int, tuple[Frame, int, str]] = {}   # id -> (it, kind, label)

    def __len__(self) -> int:
        """Frame objects known."""
        return len(self._known)

    def of(self, frames: list[Frame]) -> str | None:
        """The site of a task suspended in ``frames`` (outermost first); see
        ``await_site``."""
        known = self._known
        fallback = None
        for frame in reversed(frames):
            entry = known.get(id(frame))
            if entry is None:
                entry = self._learn(frame)
            if entry[1] == _APPLICATION_KIND:
                return entry[2]
            if entry[1] == _LIBRARY_KIND and fallback is None:
                fallback = entry[2]
        return fallback

    def _learn(self, frame: Frame) -> tuple[Frame, int, str]:
        if len(self._known) >= MAX_FRAMES:
            self._known.clear()
        kind = _kind(frame.filename, self.library)
        entry = (frame, kind, "" if kind == _STDLIB_KIND else
                 label(f"{frame.name} {frame.filename}:{frame.line}", SITE_MAX))
        self._known[id(frame)] = entry   # (the frame held: its id stays its own)
        return entry


def await_site(task: Task, library: re.Pattern[str] | None = APPLICATION) -> str | None:
    """The frame the task waits in, as "qualname file:line" (a label value: escaped and
    bounded, see ``safe_text``): its innermost frame outside the standard library and
    ``library``, else its innermost frame outside the standard library; None when all
    its frames are the standard library's."""
    return Sites(library).of(task.frames)


@lru_cache(maxsize=4096)
def _kind(filename: str, library: re.Pattern[str] | None) -> int:
    """Whether a file is the standard library's, ``library``'s or the application's
    (two searches per file, not per frame)."""
    if _STDLIB.search(filename):
        return _STDLIB_KIND
    return _LIBRARY_KIND if library is not None and library.search(filename) else \
        _APPLICATION_KIND
