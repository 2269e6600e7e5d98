"""speedscope's file format (https://www.speedscope.app/file-format-schema.json): one
sampled profile, frames shared, each stack root first with its sample count as
weight.  JSON keeps names exact (``safe_text.json_exact``)."""

from __future__ import annotations

import json
from typing import Any

from aiobpf import __version__
from aiobpf.exporters.profile.profile import Profile
from aiobpf.exporters.profile.stacks import Node
from aiobpf.safe_text import json_exact

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def document(profile: Profile) -> dict[str, Any]:
    index: dict[Node, int] = {}
    frames: list[dict[str, Any]] = []
    samples, weights = [], []
    for stack, count in sorted(profile.stacks.items(), key=lambda item: -item[1]):
        ids = []
        for node in stack:
            if node not in index:
                index[node] = len(frames)
                frame: dict[str, Any] = {"name": node.label()}
                if node.filename:
                    frame.update(file=node.filename, line=node.line)
                frames.append(frame)
            ids.append(index[node])
        samples.append(ids)
        weights.append(count)
    total = sum(weights)
    return {
        "$schema": SCHEMA,
        "exporter": f"aiobpf {__version__}",
        "name": f"aiobpf profile {profile.pid} ({profile.mode})",
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [{"type": "sampled", "name": f"pid {profile.pid}, {profile.mode}",
                      "unit": "none", "startValue": 0, "endValue": total,
                      "samples": samples, "weights": weights}],
    }


def render(profile: Profile) -> str:
    return json_exact(json.dumps(document(profile), ensure_ascii=False)) + "\n"
