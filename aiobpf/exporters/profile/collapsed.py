"""Collapsed ("folded") stacks: one line per stack, root first, frames joined by
``;``, then a space and the sample count -- what flamegraph.pl, inferno, speedscope
and Pyroscope read.  Names come from the target: escaped (``safe_text.escape``), and
a ``;`` in one is written ``\\x3b`` so that it cannot split a frame."""

from __future__ import annotations

from collections.abc import Iterator

from aiobpf.exporters.profile.profile import Profile
from aiobpf.exporters.profile.stacks import Node
from aiobpf.safe_text import escape


def frame_text(node: Node) -> str:
    """A node as one frame of a collapsed line."""
    return escape(node.label()).replace(";", "\\x3b")


def lines(profile: Profile) -> Iterator[str]:
    """The collapsed lines, most samples first (ties by text)."""
    folded = [(";".join(map(frame_text, stack)), count)
              for stack, count in profile.stacks.items()]
    for text, count in sorted(folded, key=lambda item: (-item[1], item[0])):
        yield f"{text} {count}\n"
