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


MAX_LABELS = 1 << 16   # site labels one ``labels`` dict remembers


def await_site(task: Task, library: re.Pattern[str] | None = APPLICATION,
               labels: dict[int, tuple[Frame, str]] | None = None) -> str | None:
    """The frame the task waits in, as "qualname file:line" (a label value: escaped and
    bounded, see ``safe_text``): its innermost frame outside the standard library and
    ``library``, else its innermost frame outside the standard library; None when all
    its frames are the standard library's.  ``labels`` remembers the label of each
    frame object (tasks suspended at one place share their frames: a read of 100,000
    tasks makes a few labels, not 100,000)."""
    fallback: Frame | None = None
    for frame in reversed(task.frames):
        kind = _kind(frame.filename, library)
        if kind == "application":
            return _site(frame, labels)
        if kind == "library" and fallback is None:
            fallback = frame
    return None if fallback is None else _site(fallback, labels)


@lru_cache(maxsize=4096)
def _kind(filename: str, library: re.Pattern[str] | None) -> str:
    """"stdlib", "library" or "application" (a read meets the same few files again and
    again: two searches per file, not per frame)."""
    if _STDLIB.search(filename):
        return "stdlib"
    return "library" if library is not None and library.search(filename) else "application"


def _site(frame: Frame, labels: dict[int, tuple[Frame, str]] | None) -> str:
    known = labels.get(id(frame)) if labels is not None else None
    if known is not None:
        return known[1]
    text = label(f"{frame.name} {frame.filename}:{frame.line}", SITE_MAX)
    if labels is not None and len(labels) < MAX_LABELS:
        labels[id(frame)] = (frame, text)   # (the frame held: its id stays its own)
    return text
