"""The location-table decoder against each interpreter's own co_positions().

Each interpreter of the matrix dumps, for every code object of a few stdlib
modules (nested code objects included), its co_linetable, co_firstlineno and the
line co_positions() gives for each code unit; decode() must agree on every unit.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from aiobpf.collector.linetable import LineTable, decode
from tests.conftest import matrix_params, note_used, require
from tests.pythons import Python

DUMP = r"""
import json, sys, types, asyncio.tasks, asyncio.base_events, json.decoder, email.message
def walk(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from walk(const)
out = []
for module in (asyncio.tasks, asyncio.base_events, json.decoder, email.message):
    for value in vars(module).values():
        for fn in [value] + list(vars(value).values() if isinstance(value, type) else []):
            code = getattr(fn, "__code__", None)
            if code is None:
                continue
            for c in walk(code):
                lines = [p[0] or 0 for p in c.co_positions()]
                out.append([c.co_qualname, c.co_linetable.hex(), c.co_firstlineno, lines])
json.dump(out, sys.stdout)
"""


def test_pure_decoder_edge_cases() -> None:
    assert decode(b"", 1) == LineTable((), (), 0)
    table = decode(bytes([0x80 | (13 << 3) | 1, 0x04]), 10)   # no-column entry, +2 lines, 2 units
    assert (table.line_at(0), table.line_at(1), table.line_at(2)) == (12, 12, 0)
    assert decode(bytes([0x7F, 0x80]), 1).starts == ()          # not at an entry boundary
    assert decode(bytes([0x80 | (14 << 3)]), 1).starts == ()    # truncated long form


@pytest.mark.parametrize("python", matrix_params())
def test_decoder_agrees_with_co_positions(python: Python) -> None:
    require(python)
    out = subprocess.run(python.argv("-c", DUMP), capture_output=True, text=True, check=True)
    note_used(python)
    codes = json.loads(out.stdout)
    assert len(codes) > 200
    mismatches = []
    for qualname, hex_table, firstlineno, lines in codes:
        table = decode(bytes.fromhex(hex_table), firstlineno)
        got = [table.line_at(unit) for unit in range(len(lines))]
        if got != lines:
            mismatches.append(qualname)
    assert not mismatches, mismatches[:10]
