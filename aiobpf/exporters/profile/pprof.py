"""pprof's profile.proto, gzipped: what ``go tool pprof``, Pyroscope and Grafana read.

Each stack is a sample whose locations run leaf first; a location is a node (frame or
task) at its line, in a function named by its qualname and file (a task: ``[task]
name``).  Values: the sample count, and the time the samples stand for
(count x the sampling period).  The protobuf is written here (a few message types,
varints and length-delimited fields: no dependency for them).
"""

from __future__ import annotations

import gzip
import time

from aiobpf.exporters.profile.profile import Profile
from aiobpf.exporters.profile.stacks import Node

# profile.proto field numbers
_SAMPLE_TYPE, _SAMPLE, _LOCATION, _FUNCTION, _STRINGS = 1, 2, 4, 5, 6
_TIME_NANOS, _DURATION_NANOS, _PERIOD_TYPE, _PERIOD = 9, 10, 11, 12
_VARINT, _BYTES = 0, 2


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1   # int64 fields: two's complement, as protobuf writes them
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3 | _VARINT) + _varint(value)
    return _varint(number << 3 | _BYTES) + _varint(len(value)) + value


def _packed(number: int, values: list[int]) -> bytes:
    return _field(number, b"".join(map(_varint, values)))


class _Strings:
    def __init__(self) -> None:
        self.index: dict[str, int] = {"": 0}

    def __call__(self, text: str) -> int:
        return self.index.setdefault(text, len(self.index))

    def encoded(self) -> bytes:
        return b"".join(_field(_STRINGS, text.encode("utf-8", "replace"))
                        for text in self.index)


def encode(profile: Profile) -> bytes:
    """The profile as an uncompressed profile.proto message."""
    strings = _Strings()
    kind = "cpu" if profile.mode == "cpu" else "wall"
    value_types = [(strings("samples"), strings("count")),
                   (strings(kind), strings("nanoseconds"))]
    out = bytearray()
    for type_, unit in value_types:
        out += _field(_SAMPLE_TYPE, _field(1, type_) + _field(2, unit))
    ids: dict[Node, int] = {}
    nodes: list[Node] = []
    period = profile.period_ns
    for stack, count in profile.stacks.items():
        locations = []
        for node in reversed(stack):   # leaf first
            if node not in ids:
                ids[node] = len(nodes) + 1
                nodes.append(node)
            locations.append(ids[node])
        out += _field(_SAMPLE, _packed(1, locations) + _packed(2, [count, count * period]))
    functions: dict[tuple[str, str], int] = {}   # (name, file) -> id: lines share it
    for number, node in enumerate(nodes, start=1):
        key = (node.label() if node.kind != "frame" else node.name,
               node.filename or f"<{node.kind}>")
        if key not in functions:
            functions[key] = len(functions) + 1
            name = strings(key[0])
            out += _field(_FUNCTION, _field(1, functions[key]) + _field(2, name)
                          + _field(3, name) + _field(4, strings(key[1])))
        line = _field(1, functions[key]) + _field(2, node.line)
        out += _field(_LOCATION, _field(1, number) + _field(4, line))
    out += _field(_TIME_NANOS, time.time_ns() - int(profile.duration_s * 1e9))
    out += _field(_DURATION_NANOS, int(profile.duration_s * 1e9))
    out += _field(_PERIOD_TYPE, _field(1, strings(kind)) + _field(2, strings("nanoseconds")))
    out += _field(_PERIOD, period)
    return bytes(out) + strings.encoded()


def render(profile: Profile) -> bytes:
    return gzip.compress(encode(profile), mtime=0)
