"""ELF files: sections, symbols, build-id and the data they carry (pyelftools).

This module reads files only; it knows nothing of processes.  Addresses here
are link-time virtual addresses; ``procfs`` and ``target`` add the load bias.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

_SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym


class NotElfError(Exception):
    """The file is not a readable ELF file."""


@dataclass
class Section:
    name: str
    addr: int
    offset: int
    size: int


@dataclass
class ElfImage:
    """One ELF file, opened for reading; cheap questions are answered lazily."""

    path: Path
    _stream: BinaryIO = field(repr=False)
    _elf: ELFFile = field(repr=False)
    name: str = ""  # how to call it in messages (the target's view of its path)

    def __post_init__(self) -> None:
        self.name = self.name or self.path.name

    @classmethod
    def open(cls, path: Path) -> ElfImage:
        try:
            stream = open(path, "rb")  # noqa: SIM115 - kept open for lazy reads; close()
        except OSError as exc:
            raise NotElfError(f"{path}: {exc.strerror}") from exc
        try:
            return cls(path, stream, ELFFile(stream))
        except ELFError as exc:
            stream.close()
            raise NotElfError(f"{path}: not an ELF file ({exc})") from exc

    def close(self) -> None:
        self._stream.close()

    @property
    def stream(self) -> BinaryIO:
        return self._stream

    @property
    def is_pie(self) -> bool:
        """True for position-independent files (shared objects, PIE executables)."""
        return self._elf.header["e_type"] == "ET_DYN"

    @cached_property
    def sections(self) -> dict[str, Section]:
        return {s.name: Section(s.name, s["sh_addr"], s["sh_offset"], s["sh_size"])
                for s in self._elf.iter_sections()}

    @cached_property
    def build_id(self) -> str | None:
        sec = self._elf.get_section_by_name(".note.gnu.build-id")
        if sec is None:
            return None
        for note in sec.iter_notes():  # type: ignore[attr-defined]
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return str(note["n_desc"])
        return None

    @cached_property
    def debuglink(self) -> str | None:
        sec = self._elf.get_section_by_name(".gnu_debuglink")
        if sec is None:
            return None
        return sec.data().split(b"\0", 1)[0].decode("utf-8", "replace")

    @cached_property
    def has_debug_info(self) -> bool:
        return ".debug_info" in self.sections

    @cached_property
    def load_segments(self) -> list[tuple[int, int, int, int]]:
        """(vaddr, memsz, offset, filesz) of each PT_LOAD segment."""
        return [(s["p_vaddr"], s["p_memsz"], s["p_offset"], s["p_filesz"])
                for s in self._elf.iter_segments() if s["p_type"] == "PT_LOAD"]

    def symbols(self, names: set[str], tables: tuple[str, ...] = (".dynsym", ".symtab")
                ) -> dict[str, int]:
        """Link-time addresses of the named symbols found in ``tables``.

        Parses the raw tables with ``struct`` instead of pyelftools' per-symbol
        objects: a libpython's .symtab has tens of thousands of entries.
        """
        found: dict[str, int] = {}
        for table in tables:
            sec = self._elf.get_section_by_name(table)
            if not isinstance(sec, SymbolTableSection) or sec["sh_entsize"] != _SYM.size:
                continue
            strings = self._elf.get_section(sec["sh_link"]).data()
            wanted: dict[int, str] = {}
            for name in names - found.keys():
                start = strings.find(b"\0" + name.encode() + b"\0")
                while start >= 0:
                    wanted[start + 1] = name
                    start = strings.find(b"\0" + name.encode() + b"\0", start + 1)
                if strings.startswith(name.encode() + b"\0"):
                    wanted[0] = name
            if not wanted:
                continue
            for st_name, _info, _other, shndx, value, _size in _SYM.iter_unpack(sec.data()):
                hit = wanted.get(st_name)
                if hit is not None and shndx != 0 and hit not in found:
                    found[hit] = value
            if len(found) == len(names):
                break
        return found

    def symbol(self, name: str) -> int | None:
        return self.symbols({name}).get(name)

    def read_vaddr(self, vaddr: int, size: int) -> bytes:
        """Initialised file contents at a link-time address (b"" when not in the file)."""
        for seg_vaddr, _memsz, offset, filesz in self.load_segments:
            if seg_vaddr <= vaddr and vaddr + size <= seg_vaddr + filesz:
                self._stream.seek(offset + vaddr - seg_vaddr)
                return self._stream.read(size)
        return b""

    def file_offset(self, vaddr: int) -> int | None:
        """The file offset of a link-time address inside a loaded segment."""
        for seg_vaddr, _memsz, offset, filesz in self.load_segments:
            if seg_vaddr <= vaddr < seg_vaddr + filesz:
                return offset + vaddr - seg_vaddr
        return None

    def section_data(self, name: str) -> bytes | None:
        sec = self.sections.get(name)
        if sec is None:
            return None
        self._stream.seek(sec.offset)
        return self._stream.read(sec.size)

    @cached_property
    def py_version_hex(self) -> int | None:
        """PY_VERSION_HEX from the exported ``Py_Version`` constant (3.11+)."""
        addr = self.symbol("Py_Version")
        if addr is None:
            return None
        data = self.read_vaddr(addr, 4)
        return struct.unpack("<I", data)[0] if len(data) == 4 else None

    def python_version_string(self) -> str | None:
        hexversion = self.py_version_hex
        if hexversion is None:
            return None
        return f"{hexversion >> 24}.{(hexversion >> 16) & 0xff}.{(hexversion >> 8) & 0xff}"


def find_debug_file(image: ElfImage, dirs: list[Path]) -> ElfImage | None:
    """The separate debug file of a stripped ``image``: by build-id, then by debuglink,
    under each of ``dirs`` (e.g. /usr/lib/debug); its build-id must match."""
    names = []
    if image.build_id:
        names.append(f".build-id/{image.build_id[:2]}/{image.build_id[2:]}.debug")
    if image.debuglink:
        names.append(image.debuglink)
    for directory in dirs:
        for name in names:
            try:
                debug = ElfImage.open(directory / name)
            except NotElfError:
                continue
            if debug.has_debug_info and (not image.build_id or debug.build_id == image.build_id):
                debug.name = f"{image.name} (debug file {name})"
                return debug
            debug.close()
    return None
