"""A flame graph in one HTML file: no network, no CDN; search (substring or /regexp/),
click to zoom, the share of each node on hover.  The stacks go in as JSON inside a
``<script type="application/json">`` element, with ``<``, ``>`` and ``&`` escaped so
that a name from the target cannot close the element; the page sets names with
``textContent`` only, never as HTML."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from aiobpf.exporters.profile.profile import Profile
from aiobpf.exporters.profile.stacks import Node

PLACEHOLDER = "__PROFILE_JSON__"


def tree(profile: Profile) -> dict[str, Any]:
    """The stacks merged into one tree: ``{name, kind, file, line, value, children}``."""
    root: dict[str, Any] = {"name": "all", "kind": "root", "value": 0, "children": []}
    index: dict[int, dict[Node, dict[str, Any]]] = {}
    for stack, count in profile.stacks.items():
        node = root
        node["value"] += count
        for element in stack:
            children = index.setdefault(id(node), {})
            child = children.get(element)
            if child is None:
                child = {"name": element.label(), "kind": element.kind,
                         "file": element.filename, "line": element.line,
                         "value": 0, "children": []}
                children[element] = child
                node["children"].append(child)
            child["value"] += count
            node = child
    _sort(root)
    return root


def _sort(root: dict[str, Any]) -> None:
    """Children by name, so that the same stacks always draw alike (iteratively: a
    stack may be deeper than Python's recursion limit)."""
    pending = [root]
    while pending:
        node = pending.pop()
        node["children"].sort(key=lambda c: c["name"])
        pending.extend(node["children"])


def render(profile: Profile) -> str:
    rate = profile.effective_rate_hz
    title = (f"aiobpf profile of PID {profile.pid}: {profile.mode}, {profile.samples} "
             f"samples" + (f" at {rate:.1f} Hz" if rate else ""))
    payload = json.dumps({"title": title, "root": tree(profile)}, ensure_ascii=True)
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    template = resources.files(__package__).joinpath("flamegraph.html").read_text("utf-8")
    return template.replace(PLACEHOLDER, payload)
