"""Struct member offsets, sizes, bit-fields and enum values from DWARF.

This module only knows ELF/DWARF (through pyelftools); it does not know what
CPython is.  ``layouts`` decides which names to ask for.

Scanning all of libpython's DWARF takes seconds, so the scan visits only the
top-level DIEs of each compile unit, starts with the units most likely to hold
the wanted types, and stops as soon as every wanted name has been found.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from elftools.dwarf.die import DIE
from elftools.elf.elffile import ELFFile

_STRUCT_TAGS = ("DW_TAG_structure_type", "DW_TAG_union_type")
_TRANSPARENT_TAGS = ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
                     "DW_TAG_atomic_type")

# Compile units that define most of what aiobpf asks for; scanned first.
PREFERRED_UNITS = (
    "Python/pystate.c", "Objects/genobject.c", "Objects/dictobject.c",
    "Objects/unicodeobject.c", "Objects/codeobject.c", "Objects/typeobject.c",
    "Modules/_asynciomodule.c", "Python/ceval.c", "Objects/setobject.c",
    "Objects/weakrefobject.c", "Modules/_functoolsmodule.c", "Objects/funcobject.c",
    "Objects/classobject.c", "Objects/methodobject.c", "Objects/longobject.c",
    "Objects/moduleobject.c", "Objects/cellobject.c", "Modules/_collectionsmodule.c",
)


class DwarfError(Exception):
    """The ELF file has no usable DWARF for what was asked."""


@dataclass(frozen=True)
class Member:
    """Where a (possibly nested) member sits inside its outermost struct."""

    offset: int
    bit_offset: int | None = None  # bit position from the struct start, for bit-fields
    bit_size: int | None = None


def _string_filter(elf: ELFFile):
    """A cheap test that rules out names the DWARF cannot contain.

    GCC and clang keep names in .debug_str (tail-merged, so only the suffix
    test is safe); a name that is not there is not worth a full scan.
    """
    pools = [sec.data() for sec in (elf.get_section_by_name(".debug_str"),
                                    elf.get_section_by_name(".debug_line_str")) if sec]
    if not pools:
        return lambda name: True
    pool = b"".join(pools)
    return lambda name: len(name) < 4 or (name.encode() + b"\0") in pool


def _strip(die: DIE | None) -> DIE | None:
    while die is not None and die.tag in _TRANSPARENT_TAGS:
        if "DW_AT_type" not in die.attributes:
            return None
        die = die.get_DIE_from_attribute("DW_AT_type")
    return die


def _name(die: DIE) -> str | None:
    attr = die.attributes.get("DW_AT_name")
    return attr.value.decode("utf-8", "replace") if attr else None


class DwarfTypes:
    """Named struct, union and enum definitions of one ELF file."""

    def __init__(self, stream: BinaryIO, types: Iterable[str], enums: Iterable[str] = ()) -> None:
        elf = ELFFile(stream)
        if not elf.has_dwarf_info() or elf.get_section_by_name(".debug_info") is None:
            raise DwarfError("no .debug_info section")
        self._dwarf = elf.get_dwarf_info()
        self._types: dict[str, DIE] = {}
        self.enums: dict[str, int] = {}
        present = _string_filter(elf)
        self._scan({t for t in types if present(t)}, {e for e in enums if present(e)})

    # -- scanning ---------------------------------------------------------
    def _units(self) -> Iterator:
        units = list(self._dwarf.iter_CUs())
        rank = {name: i for i, name in enumerate(PREFERRED_UNITS)}

        def key(cu) -> int:
            name = _name(cu.get_top_DIE()) or ""
            for unit, i in rank.items():
                if name.endswith(unit):
                    return i
            return len(rank)

        return iter(sorted(units, key=key))

    def _scan(self, types: set[str], enums: set[str]) -> None:
        missing_types, missing_enums = set(types), set(enums)
        for cu in self._units():
            if not missing_types and not missing_enums:
                return
            for die in cu.get_top_DIE().iter_children():
                if die.tag == "DW_TAG_enumeration_type" and missing_enums:
                    for item in die.iter_children():
                        name = _name(item)
                        if name in missing_enums:
                            self.enums[name] = int(item.attributes["DW_AT_const_value"].value)
                            missing_enums.discard(name)
                    continue
                name = _name(die)
                if name not in missing_types or "DW_AT_declaration" in die.attributes:
                    continue
                target = _strip(die)
                if target is None or target.tag not in _STRUCT_TAGS:
                    continue
                if "DW_AT_declaration" in target.attributes:
                    continue
                self._types[name] = target
                missing_types.discard(name)

    # -- queries ----------------------------------------------------------
    def has_type(self, type_name: str) -> bool:
        return type_name in self._types

    def sizeof(self, type_name: str) -> int:
        die = self._type(type_name)
        return int(die.attributes["DW_AT_byte_size"].value)

    def member(self, type_name: str, path: str) -> Member:
        """Offset of ``path`` ("a.b.c") inside the struct called ``type_name``."""
        die: DIE | None = self._type(type_name)
        offset = 0
        parts = path.split(".")
        for i, part in enumerate(parts):
            assert die is not None
            found = self._find_member(die, part)
            if found is None:
                raise DwarfError(f"{type_name} has no member {path!r}")
            member, base = found
            offset += base
            if "DW_AT_data_bit_offset" in member.attributes:
                bit = int(member.attributes["DW_AT_data_bit_offset"].value)
                size = int(member.attributes["DW_AT_bit_size"].value)
                if i != len(parts) - 1:
                    raise DwarfError(f"{type_name}.{path}: bit-field in the middle of a path")
                return Member(offset + bit // 8, offset * 8 + bit, size)
            loc = member.attributes.get("DW_AT_data_member_location")
            offset += int(loc.value) if loc is not None else 0
            if "DW_AT_bit_size" in member.attributes:  # DWARF 2/3 big-endian bit numbering
                size = int(member.attributes["DW_AT_bit_size"].value)
                byte_size = int(member.attributes["DW_AT_byte_size"].value)
                bit = byte_size * 8 - int(member.attributes["DW_AT_bit_offset"].value) - size
                return Member(offset, offset * 8 + bit, size)
            die = _strip(member.get_DIE_from_attribute("DW_AT_type"))
            if die is not None and die.tag == "DW_TAG_array_type":
                die = _strip(die.get_DIE_from_attribute("DW_AT_type"))
        return Member(offset)

    def _type(self, type_name: str) -> DIE:
        try:
            return self._types[type_name]
        except KeyError:
            raise DwarfError(f"no definition of {type_name}") from None

    def _find_member(self, struct: DIE, name: str) -> tuple[DIE, int] | None:
        """Find a member by name, looking through anonymous structs and unions."""
        for child in struct.iter_children():
            if child.tag != "DW_TAG_member":
                continue
            if _name(child) == name:
                return child, 0
            if _name(child) is None and "DW_AT_type" in child.attributes:
                inner = _strip(child.get_DIE_from_attribute("DW_AT_type"))
                if inner is not None and inner.tag in _STRUCT_TAGS:
                    found = self._find_member(inner, name)
                    if found is not None:
                        loc = child.attributes.get("DW_AT_data_member_location")
                        return found[0], found[1] + (int(loc.value) if loc else 0)
        return None
