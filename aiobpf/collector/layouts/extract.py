"""Read the values named in ``spec`` from one binary's DWARF."""

from __future__ import annotations

from typing import BinaryIO

from aiobpf.collector.dwarf import DwarfError, DwarfTypes
from aiobpf.collector.elf import ElfImage
from aiobpf.collector.layouts.spec import (
    ASYNCIO_DEBUG_STRUCT,
    DEBUG_STRUCT,
    FIELDS,
    asyncio_debug_paths,
    debug_paths,
)


def _parse(spelling: str) -> tuple[str, str, str]:
    """Split a spelling into (kind, type, member path)."""
    if spelling.startswith("enum "):
        return "enum", "", spelling[5:]
    if spelling.startswith("sizeof "):
        return "size", spelling[7:], ""
    kind = "offset"
    if spelling.startswith("bits "):
        kind, spelling = "bits", spelling[5:]
    type_name, _, path = spelling.partition(":")
    return kind, type_name, path


def _wanted(binaries: set[str]) -> tuple[set[str], set[str]]:
    types, enums = {DEBUG_STRUCT, ASYNCIO_DEBUG_STRUCT}, set()
    for field in FIELDS:
        if field.binary not in binaries:
            continue
        for spelling in field.spellings:
            kind, type_name, path = _parse(spelling)
            (enums.add(path) if kind == "enum" else types.add(type_name))
    return types, enums


def extract(source: ElfImage | BinaryIO, binaries: set[str]) -> dict[str, int]:
    """Every value of ``spec.FIELDS`` for ``binaries`` that this file's DWARF defines.

    Also records where ``_Py_DebugOffsets`` and the asyncio debug offsets keep
    their members (keys ``dbg:<path>`` and ``adbg:<path>``) when the file defines them.
    """
    types, enums = _wanted(binaries)
    dwarf = DwarfTypes(source, types, enums)
    out: dict[str, int] = {}
    for field in FIELDS:
        if field.binary not in binaries:
            continue
        for spelling in field.spellings:
            kind, type_name, path = _parse(spelling)
            try:
                if kind == "enum":
                    if path not in dwarf.enums:
                        continue
                    out[field.name] = dwarf.enums[path]
                elif kind == "size":
                    out[field.name] = dwarf.sizeof(type_name)
                elif kind == "bits":
                    member = dwarf.member(type_name, path)
                    if member.bit_offset is None or member.bit_size is None:
                        continue
                    out[field.name] = member.bit_offset
                    out[field.name + ".width"] = member.bit_size
                else:
                    out[field.name] = dwarf.member(type_name, path).offset
            except DwarfError:
                continue
            break
    for prefix, struct, paths in (("dbg:", DEBUG_STRUCT, debug_paths()),
                                  ("adbg:", ASYNCIO_DEBUG_STRUCT, asyncio_debug_paths())):
        if not dwarf.has_type(struct):
            continue
        for path in paths:
            try:
                out[prefix + path] = dwarf.member(struct, path).offset
            except DwarfError:
                continue
    return out
