"""Decode CPython's location table (``co_linetable``, 3.11+) into line ranges.

Format (CPython's ``Objects/locations.md``): a sequence of entries, each
starting with a byte whose top bit is set; bits 3-6 are the entry's code and
bits 0-2 its length minus one, in code units.  Codes 0-9 keep the line (short
form), 10-12 add code-10 to it (one-line form), 13 adds a signed varint (no
columns), 14 adds a signed varint and carries end line and columns (long
form), 15 means "no location".  Varints are little-endian 6-bit groups with
0x40 as the continuation bit.

Pure functions: bytes in, tuples out.  Malformed input ends the decoding
early instead of raising.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    byte = data[pos]
    pos += 1
    value = byte & 63
    shift = 0
    while byte & 64:
        byte = data[pos]
        pos += 1
        shift += 6
        value |= (byte & 63) << shift
        if shift > 60:
            raise IndexError("varint too long")
    return value, pos


def _svarint(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = _varint(data, pos)
    return (-(value >> 1) if value & 1 else value >> 1), pos


@dataclass(frozen=True)
class LineTable:
    """Sorted code-unit ranges and the line each one belongs to (0: none)."""

    starts: tuple[int, ...]
    lines: tuple[int, ...]
    end: int

    def line_at(self, unit: int) -> int:
        """Line of the instruction at code unit ``unit``; 0 when unknown."""
        if unit < 0 or unit >= self.end or not self.starts:
            return 0
        return self.lines[bisect_right(self.starts, unit) - 1]


def decode(linetable: bytes, firstlineno: int) -> LineTable:
    starts: list[int] = []
    lines: list[int] = []
    line = firstlineno
    unit = 0
    pos = 0
    n = len(linetable)
    try:
        while pos < n:
            first = linetable[pos]
            if not first & 0x80:
                break  # not at an entry boundary: malformed
            pos += 1
            code = (first >> 3) & 15
            length = (first & 7) + 1
            has_line = True
            if code == 15:
                has_line = False
            elif code == 14:
                delta, pos = _svarint(linetable, pos)
                line += delta
                _, pos = _varint(linetable, pos)  # end line delta
                _, pos = _varint(linetable, pos)  # column + 1
                _, pos = _varint(linetable, pos)  # end column + 1
            elif code == 13:
                delta, pos = _svarint(linetable, pos)
                line += delta
            elif code >= 10:
                line += code - 10
                pos += 2
            else:
                pos += 1
            starts.append(unit)
            lines.append(line if has_line and line > 0 else 0)
            unit += length
    except IndexError:
        pass
    return LineTable(tuple(starts), tuple(lines), unit)
