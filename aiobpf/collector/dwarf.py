"""Struct member offsets, sizes, bit-fields and enum values from DWARF.

This module only knows ELF/DWARF (through pyelftools); it does not know what
CPython is.  ``layouts`` decides which names to ask for.

Scanning all of libpython's DWARF takes seconds, so the scan visits only the
top-level DIEs of each compile unit, starts with the units most likely to hold
the wanted types, and stops as soon as every wanted name has been found.

The DWARF may be hostile: every walk is bounded (type chains, nesting, children,
DIEs in all), references are followed only forward in a list of children, and
whatever pyelftools raises on malformed data becomes ``DwarfError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from elftools.dwarf.die import DIE

from aiobpf.collector import deadline
from aiobpf.collector.elf import ElfImage, NotElfError, malformed_is

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


MAX_TYPE_CHAIN = 32        # typedef/const/volatile links followed to reach a type
MAX_NESTING = 8            # anonymous structs looked into, one inside the other
MAX_CHILDREN = 200_000     # children of one DIE
MAX_DIES = 3_000_000       # DIEs visited in one file
MAX_UNITS = 100_000        # compile units


class DwarfError(Exception):
    """The ELF file has no usable DWARF for what was asked (or malformed DWARF)."""


_guarded = malformed_is(DwarfError, lambda types: types.name)


@dataclass(frozen=True)
class Member:
    """Where a (possibly nested) member sits inside its outermost struct."""

    offset: int
    bit_offset: int | None = None  # bit position from the struct start, for bit-fields
    bit_size: int | None = None


def _string_filter(image: ElfImage):
    """A cheap test that rules out names the DWARF cannot contain.

    GCC and clang keep names in .debug_str (tail-merged, so only the suffix
    test is safe); a name that is not there is not worth a full scan.
    """
    pools = [data for data in (image.section_data(".debug_str"),
                               image.section_data(".debug_line_str")) if data]
    if not pools:
        return lambda name: True
    pool = b"".join(pools)
    return lambda name: len(name) < 4 or (name.encode() + b"\0") in pool


def _strip(die: DIE | None) -> DIE | None:
    """The type behind typedefs and qualifiers (None at a chain too long: a loop)."""
    for _ in range(MAX_TYPE_CHAIN):
        if die is None or die.tag not in _TRANSPARENT_TAGS:
            return die
        if "DW_AT_type" not in die.attributes:
            return None
        die = die.get_DIE_from_attribute("DW_AT_type")
    raise DwarfError(f"a chain of more than {MAX_TYPE_CHAIN} typedefs (a loop?)")


def _const(die: DIE, attribute: str) -> int:
    """An attribute that must be a constant (not a block or an expression)."""
    attr = die.attributes.get(attribute)
    if attr is None or not isinstance(attr.value, int) or isinstance(attr.value, bool):
        raise DwarfError(f"{attribute} of the DIE at {die.offset:#x} is not a constant")
    return attr.value


def _name(die: DIE) -> str | None:
    attr = die.attributes.get("DW_AT_name")
    return attr.value.decode("utf-8", "replace") if attr else None


class DwarfTypes:
    """Named struct, union and enum definitions of one ELF file."""

    def __init__(self, source: ElfImage | BinaryIO, types: Iterable[str],
                 enums: Iterable[str] = ()) -> None:
        if isinstance(source, ElfImage):
            image = source
        else:
            try:
                image = ElfImage.from_stream(source, Path(str(getattr(source, "name", "?"))))
            except NotElfError as exc:
                raise DwarfError(str(exc)) from exc
        self.name = image.name
        if not image.has_debug_info:
            raise DwarfError(f"{image.name}: no .debug_info section")
        self._types: dict[str, DIE] = {}
        self.enums: dict[str, int] = {}
        self._visited = 0
        try:
            self._dwarf = image.dwarf_info()
            present = _string_filter(image)
        except NotElfError as exc:
            raise DwarfError(str(exc)) from exc
        self._scan({t for t in types if present(t)}, {e for e in enums if present(e)})

    def _children(self, die: DIE) -> Iterator[DIE]:
        """The children of ``die``, bounded, and only ever moving forward in the file."""
        last = die.offset
        for count, child in enumerate(die.iter_children()):
            self._visited += 1
            if count >= MAX_CHILDREN or self._visited > MAX_DIES:
                raise DwarfError(f"{self.name}: too many DIEs")
            if child.offset <= last:
                raise DwarfError(f"{self.name}: the DIE at {die.offset:#x} has a child "
                                 "list that loops")
            last = child.offset
            if not count & 0x3FF:
                deadline.check()
            yield child

    # -- scanning ---------------------------------------------------------
    def _units(self) -> Iterator:
        units = []
        for cu in self._dwarf.iter_CUs():
            deadline.check()
            units.append(cu)
            if len(units) > MAX_UNITS:
                raise DwarfError(f"{self.name}: more than {MAX_UNITS} compile units")
        rank = {name: i for i, name in enumerate(PREFERRED_UNITS)}

        def key(cu) -> int:
            name = _name(cu.get_top_DIE()) or ""
            for unit, i in rank.items():
                if name.endswith(unit):
                    return i
            return len(rank)

        return iter(sorted(units, key=key))

    @_guarded
    def _scan(self, types: set[str], enums: set[str]) -> None:
        missing_types, missing_enums = set(types), set(enums)
        for cu in self._units():
            if not missing_types and not missing_enums:
                return
            for die in self._children(cu.get_top_DIE()):
                if die.tag == "DW_TAG_enumeration_type" and missing_enums:
                    for item in self._children(die):
                        name = _name(item)
                        if name in missing_enums:
                            self.enums[name] = _const(item, "DW_AT_const_value")
                            missing_enums.discard(name)
                    continue
                name = _name(die)
                if name not in missing_types or "DW_AT_declaration" in die.attributes:
                    continue
                try:
                    target = _strip(die)
                except DwarfError:
                    continue          # a typedef loop: not a definition
                if target is None or target.tag not in _STRUCT_TAGS:
                    continue
                if "DW_AT_declaration" in target.attributes:
                    continue
                self._types[name] = target
                missing_types.discard(name)

    # -- queries ----------------------------------------------------------
    def has_type(self, type_name: str) -> bool:
        return type_name in self._types

    @_guarded
    def sizeof(self, type_name: str) -> int:
        return _const(self._type(type_name), "DW_AT_byte_size")

    @_guarded
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
                bit = _const(member, "DW_AT_data_bit_offset")
                size = _const(member, "DW_AT_bit_size")
                if i != len(parts) - 1:
                    raise DwarfError(f"{type_name}.{path}: bit-field in the middle of a path")
                return Member(offset + bit // 8, offset * 8 + bit, size)
            if "DW_AT_data_member_location" in member.attributes:
                offset += _const(member, "DW_AT_data_member_location")
            if "DW_AT_bit_size" in member.attributes:  # DWARF 2/3 big-endian bit numbering
                size = _const(member, "DW_AT_bit_size")
                byte_size = _const(member, "DW_AT_byte_size")
                bit = byte_size * 8 - _const(member, "DW_AT_bit_offset") - size
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

    def _find_member(self, struct: DIE, name: str, depth: int = 0
                     ) -> tuple[DIE, int] | None:
        """Find a member by name, looking through anonymous structs and unions."""
        if depth > MAX_NESTING:
            raise DwarfError(f"{self.name}: anonymous members nested more than "
                             f"{MAX_NESTING} deep (a loop?)")
        for child in self._children(struct):
            if child.tag != "DW_TAG_member":
                continue
            if _name(child) == name:
                return child, 0
            if _name(child) is None and "DW_AT_type" in child.attributes:
                inner = _strip(child.get_DIE_from_attribute("DW_AT_type"))
                if inner is not None and inner.tag in _STRUCT_TAGS:
                    found = self._find_member(inner, name, depth + 1)
                    if found is not None:
                        loc = ("DW_AT_data_member_location" in child.attributes
                               and _const(child, "DW_AT_data_member_location"))
                        return found[0], found[1] + int(loc)
        return None
