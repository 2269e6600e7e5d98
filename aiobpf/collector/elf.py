"""ELF files: sections, symbols, build-id and the data they carry (pyelftools).

This module reads files only; it knows nothing of processes.  Addresses here
are link-time virtual addresses; ``procfs`` and ``target`` add the load bias.

Every file may come from a hostile process: the headers are checked against the
file's size when it is opened (no section or segment may extend past its end, no
section may be larger than ``MAX_SECTION_BYTES`` once decompressed), every read is
bounded, and anything pyelftools raises on a malformed file becomes ``NotElfError``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from elftools.elf.elffile import ELFFile

from aiobpf.collector import deadline
from aiobpf.collector.files import MAX_FILE_BYTES, Tree, UnsafeFile, reopen_checked

_SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym
_NOTE = struct.Struct("<III")     # namesz, descsz, type
NT_GNU_BUILD_ID = 3
MAX_SECTIONS = 4096
MAX_SEGMENTS = 1024
MAX_SECTION_BYTES = 256 << 20      # one section's data (decompressed)
MAX_DWARF_BYTES = 512 << 20        # the DWARF sections read for one file, together
MAX_NOTES = 64
MAX_DEBUGLINK = 255
_ZLIB_MAX_RATIO = 1100             # deflate cannot expand more than ~1032:1
_CHUNK = 1 << 20
# SHA-256 of files already hashed, by the identity of the file the descriptor holds:
# every process of an interpreter maps the same files, and hashing a debug file of tens
# of megabytes for each new process was half of what examining one cost.  A file
# written to since has another change time (which no user can set back).
_DIGESTS: dict[tuple[int, ...], str] = {}
MAX_DIGESTS = 256
# DWARF sections the layout code reads; the others (lines, locations, ranges, frames)
# are never loaded.
DWARF_SECTIONS = (".debug_info", ".debug_abbrev", ".debug_str", ".debug_line_str",
                  ".debug_str_offsets", ".debug_addr")

T = TypeVar("T")


class NotElfError(Exception):
    """The file is not a readable ELF file (or a malformed one)."""


# aiobpf's own errors pass through; anything else raised while parsing a file is the
# file's fault.  (MemoryError is not caught: the size checks must prevent it.)
_OURS: tuple[type[BaseException], ...] = (NotElfError, deadline.Overrun, UnsafeFile,
                                          MemoryError)


def malformed_is(error: type[Exception], name: Callable[[Any], str]
                 ) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Turn anything but aiobpf's own errors raised by the decorated method into ``error``."""
    def decorate(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def guarded(self: Any, *args: Any, **kwargs: Any) -> T:
            try:
                return method(self, *args, **kwargs)
            except _OURS:
                raise
            except error:
                raise
            except Exception as exc:  # pyelftools and construct raise many kinds
                raise error(f"{name(self)}: malformed ({type(exc).__name__}: "
                            f"{str(exc)[:200]})") from exc
        return guarded
    return decorate


_guarded = malformed_is(NotElfError, lambda image: image.name)


@dataclass
class Section:
    name: str
    addr: int
    offset: int
    size: int
    stored: bool = True        # has bytes in the file (not SHT_NOBITS)
    compressed: bool = False
    data_size: int = 0         # size once decompressed


@dataclass
class ElfImage:
    """One ELF file, opened for reading; cheap questions are answered lazily."""

    path: Path
    _stream: BinaryIO = field(repr=False)
    _elf: ELFFile = field(repr=False)
    name: str = ""  # how to call it in messages (the target's view of its path)
    size: int = 0
    sections: dict[str, Section] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.path.name

    @classmethod
    def open(cls, path: Path) -> ElfImage:
        """A file the operator names (links followed); still opened without blocking
        and checked like any other."""
        try:
            fd = reopen_checked(os.open(path, os.O_PATH | os.O_CLOEXEC), str(path))
        except OSError as exc:
            raise NotElfError(f"{path}: {exc.strerror}") from exc
        except UnsafeFile as exc:
            raise NotElfError(str(exc)) from exc
        return cls.from_fd(fd, path)

    @classmethod
    def from_fd(cls, fd: int, path: Path, name: str = "") -> ElfImage:
        """The ELF file open at ``fd`` (taken over: closed on failure and by ``close``)."""
        stream = os.fdopen(fd, "rb")
        return cls.from_stream(stream, path, name)

    @classmethod
    def from_stream(cls, stream: BinaryIO, path: Path, name: str = "") -> ElfImage:
        """The ELF file read through ``stream`` (closed on failure and by ``close``)."""
        label = name or path.name
        try:
            size = stream.seek(0, io.SEEK_END)
            stream.seek(0)
            if not 0 < size <= MAX_FILE_BYTES:
                raise NotElfError(f"{label}: {size} bytes")
            if stream.read(4) != b"\x7fELF":
                raise NotElfError(f"{label}: not an ELF file")
            stream.seek(0)
            try:
                elf = ELFFile(stream)
            except Exception as exc:
                raise NotElfError(f"{label}: not a readable ELF file ({exc})") from exc
            image = cls(path, stream, elf, name, size)
            image._check()
        except BaseException:
            stream.close()
            raise
        return image

    def close(self) -> None:
        self._stream.close()

    @property
    def stream(self) -> BinaryIO:
        return self._stream

    # -- the checks made when a file is opened --------------------------------------------
    @_guarded
    def _check(self) -> None:
        elf, size = self._elf, self.size
        if elf.elfclass != 64 or not elf.little_endian:
            raise NotElfError(f"{self.name}: not a 64-bit little-endian ELF file")
        header = elf.header
        count = elf.num_sections()
        if count > MAX_SECTIONS:
            raise NotElfError(f"{self.name}: {count} sections")
        if count and (header["e_shentsize"] != elf.structs.Elf_Shdr.sizeof()
                      or header["e_shoff"] + count * header["e_shentsize"] > size):
            raise NotElfError(f"{self.name}: the section headers are not in the file")
        segments = elf.num_segments()
        if segments > MAX_SEGMENTS:
            raise NotElfError(f"{self.name}: {segments} segments")
        if segments and (header["e_phentsize"] != elf.structs.Elf_Phdr.sizeof()
                         or header["e_phoff"] + segments * header["e_phentsize"] > size):
            raise NotElfError(f"{self.name}: the program headers are not in the file")
        if count and elf["e_shstrndx"] >= count and elf["e_shstrndx"] != 0xFFFF:
            raise NotElfError(f"{self.name}: no section name table")
        sections: dict[str, Section] = {}
        for index in range(count):
            deadline.check()
            sec = elf.get_section(index)
            stored = sec["sh_type"] != "SHT_NOBITS"
            if stored and sec["sh_offset"] + sec["sh_size"] > size:
                raise NotElfError(f"{self.name}: section {sec.name!r} extends past the end "
                                  f"of the file ({sec['sh_size']} bytes at "
                                  f"{sec['sh_offset']:#x}, file {size})")
            compressed = bool(sec.compressed)
            data_size = sec.data_size if stored else 0
            if stored and (data_size > MAX_SECTION_BYTES or (
                    compressed and data_size > _ZLIB_MAX_RATIO * max(sec["sh_size"], 1))):
                raise NotElfError(f"{self.name}: section {sec.name!r} would take "
                                  f"{data_size} bytes")
            sections.setdefault(sec.name, Section(sec.name, sec["sh_addr"], sec["sh_offset"],
                                                  sec["sh_size"], stored, compressed,
                                                  data_size))
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_offset"] + seg["p_filesz"] > size:
                raise NotElfError(f"{self.name}: a loaded segment extends past the end "
                                  "of the file")
        self.sections = sections

    # -- questions --------------------------------------------------------------------
    @property
    def is_pie(self) -> bool:
        """True for position-independent files (shared objects, PIE executables)."""
        return bool(self._elf.header["e_type"] == "ET_DYN")

    @cached_property
    @_guarded
    def build_id(self) -> str | None:
        """The GNU build-id, in hex."""
        data = self.section_data(".note.gnu.build-id") or b""
        pos = 0
        for _ in range(MAX_NOTES):
            if pos + _NOTE.size > len(data):
                break
            namesz, descsz, kind = _NOTE.unpack_from(data, pos)
            desc = pos + _NOTE.size + (namesz + 3) // 4 * 4
            end = desc + (descsz + 3) // 4 * 4
            if end > len(data):
                break
            if kind == NT_GNU_BUILD_ID and 0 < descsz <= 64:
                return data[desc:desc + descsz].hex()
            pos = end
        return None

    @cached_property
    @_guarded
    def debuglink(self) -> str | None:
        """The file name in ``.gnu_debuglink`` (any name, as the file says it)."""
        data = self.section_data(".gnu_debuglink", limit=4096)
        if not data:
            return None
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")

    @cached_property
    @_guarded
    def debuglink_crc(self) -> int | None:
        data = self.section_data(".gnu_debuglink", limit=4096) or b""
        end = data.find(b"\0")
        if end < 0:
            return None
        at = (end + 4) // 4 * 4
        return struct.unpack_from("<I", data, at)[0] if at + 4 <= len(data) else None

    @property
    def has_debug_info(self) -> bool:
        sec = self.sections.get(".debug_info")
        return sec is not None and sec.stored and sec.data_size > 0

    @cached_property
    @_guarded
    def load_segments(self) -> list[tuple[int, int, int, int]]:
        """(vaddr, memsz, offset, filesz) of each PT_LOAD segment."""
        return [(s["p_vaddr"], s["p_memsz"], s["p_offset"], s["p_filesz"])
                for s in self._elf.iter_segments() if s["p_type"] == "PT_LOAD"]

    @_guarded
    def symbols(self, names: set[str], tables: tuple[str, ...] = (".dynsym", ".symtab")
                ) -> dict[str, int]:
        """Link-time addresses of the named symbols found in ``tables``.

        Parses the raw tables with ``struct`` instead of pyelftools' per-symbol
        objects: a libpython's .symtab has tens of thousands of entries.
        """
        found: dict[str, int] = {}
        for table in tables:
            sec = self._elf.get_section_by_name(table)
            if sec is None or sec["sh_type"] not in ("SHT_SYMTAB", "SHT_DYNSYM") \
                    or sec["sh_entsize"] != _SYM.size:
                continue
            link = self._elf.get_section(sec["sh_link"])
            strings = self.section_data(link.name) if link["sh_type"] == "SHT_STRTAB" else None
            symbols = self.section_data(table)
            if not strings or not symbols:
                continue
            wanted: dict[int, str] = {}
            for name in names - found.keys():
                needle = b"\0" + name.encode() + b"\0"
                start = strings.find(needle)
                while start >= 0:
                    deadline.check()
                    wanted[start + 1] = name
                    start = strings.find(needle, start + 1)
                if strings.startswith(name.encode() + b"\0"):
                    wanted[0] = name
            if not wanted:
                continue
            usable = len(symbols) - len(symbols) % _SYM.size
            for i, (st_name, _info, _other, shndx, value, _size) in enumerate(
                    _SYM.iter_unpack(symbols[:usable])):
                if not i & 0xFFFF:
                    deadline.check()
                hit = wanted.get(st_name)
                if hit is not None and shndx != 0 and hit not in found:
                    found[hit] = value
            if len(found) == len(names):
                break
        return found

    def symbol(self, name: str) -> int | None:
        return self.symbols({name}).get(name)

    @_guarded
    def read_vaddr(self, vaddr: int, size: int) -> bytes:
        """Initialised file contents at a link-time address (b"" when not in the file)."""
        if not 0 <= size <= MAX_SECTION_BYTES:
            return b""
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

    @_guarded
    def section_data(self, name: str, limit: int = MAX_SECTION_BYTES) -> bytes | None:
        """The (decompressed) bytes of section ``name``; None when it is absent, holds
        nothing in the file, or is larger than ``limit``."""
        sec = self.sections.get(name)
        if sec is None or not sec.stored or sec.data_size > limit:
            return None
        if sec.compressed:
            found = self._elf.get_section_by_name(name)
            return found.data() if found is not None else None
        self._stream.seek(sec.offset)
        return self._stream.read(sec.size)

    @_guarded
    def dwarf_info(self) -> Any:
        """pyelftools' DWARFInfo over the few DWARF sections aiobpf reads, checked to
        hold at most ``MAX_DWARF_BYTES`` together; no link to another file is followed."""
        kept = [s for s in DWARF_SECTIONS if s in self.sections and self.sections[s].stored]
        if ".debug_info" not in kept or ".debug_abbrev" not in kept:
            raise NotElfError(f"{self.name}: no DWARF")
        total = sum(self.sections[s].data_size for s in kept)
        if total > MAX_DWARF_BYTES:
            raise NotElfError(f"{self.name}: {total} bytes of DWARF")
        view = ELFFile(self._stream)    # its own section map, without what is not read
        names = view._section_name_map
        for hidden in [n for n in names if n.startswith((".debug", ".zdebug", ".eh_frame",
                                                         ".gnu_debug")) and n not in kept]:
            del names[hidden]
        return view.get_dwarf_info(relocate_dwarf_sections=False, follow_links=False)

    @cached_property
    @_guarded
    def digest(self) -> str:
        """SHA-256 of the whole file: what its content is, whatever its build-id says
        (remembered for the file as it is: device, inode, size, change times)."""
        key = self._identity()
        known = _DIGESTS.get(key) if key is not None else None
        if known is not None:
            return known
        sha = hashlib.sha256()
        self._stream.seek(0)
        while chunk := self._stream.read(_CHUNK):
            deadline.check()
            sha.update(chunk)
        if key is not None and key == self._identity():   # unchanged while it was read
            if len(_DIGESTS) >= MAX_DIGESTS:
                _DIGESTS.clear()
            _DIGESTS[key] = sha.hexdigest()
        return sha.hexdigest()

    def _identity(self) -> tuple[int, ...] | None:
        try:
            st = os.fstat(self._stream.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            return None   # (not a file: never remembered)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @_guarded
    def crc32(self) -> int:
        crc = 0
        self._stream.seek(0)
        while chunk := self._stream.read(_CHUNK):
            deadline.check()
            crc = zlib.crc32(chunk, crc)
        return crc

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


def debuglink_name(name: str | None) -> str | None:
    """A ``.gnu_debuglink`` is a file *name*: None for anything else (a path, "..", a
    control character, an overlong name)."""
    if not name or len(name) > MAX_DEBUGLINK or "/" in name or name in (".", ".."):
        return None
    if any(ord(c) < 0x20 or c in "\x7f\ufffd" for c in name):
        return None
    return name


def _debug_names(image: ElfImage) -> list[str]:
    names = []
    build_id = image.build_id
    if build_id and len(build_id) > 2 and all(c in "0123456789abcdef" for c in build_id):
        names.append(f".build-id/{build_id[:2]}/{build_id[2:]}.debug")
    link = debuglink_name(image.debuglink)
    if link is not None:
        names.append(link)
    return names


def find_debug_file(image: ElfImage, dirs: Sequence[Tree | Path]) -> ElfImage | None:
    """The separate debug file of a stripped ``image``: by build-id, then by debuglink,
    in each of ``dirs`` (trees no link may leave: a target's root, or a host directory
    such as /usr/lib/debug).  It must carry DWARF and the same build-id (or, when
    ``image`` has none, the debuglink's CRC)."""
    names = _debug_names(image)
    for where in dirs:
        tree = where if isinstance(where, Tree) else Tree(where)
        for name in names:
            try:
                fd = tree.open(name)
            except UnsafeFile:
                continue
            try:
                debug = ElfImage.from_fd(fd, Path(str(tree)) / name,
                                         f"{image.name} (debug file {name})")
            except NotElfError:
                continue
            try:
                if debug.has_debug_info and (
                        debug.build_id == image.build_id if image.build_id
                        else debug.crc32() == image.debuglink_crc):
                    return debug
            except NotElfError:
                pass
            debug.close()
    return None
