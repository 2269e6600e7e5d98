"""CPython memory layouts: every version-specific offset aiobpf uses, in one place.

A ``Layout`` is assembled for one target from, in increasing precedence:

1. the generated table for its minor version (``tables.py``, from reference DWARF);
2. the DWARF of the target's own binaries (or of their separate debug files),
   when they carry it, cached because a scan takes seconds.  The cache is keyed by
   a SHA-256 of the file that holds the DWARF (not by its build-id, which a target
   chooses), lives in a directory only the daemon's user may write, and what is
   read back is checked like any other input;
3. the offsets CPython publishes in the binaries themselves: ``_Py_DebugOffsets``
   at the start of ``.PyRuntime`` (3.13+) and the ``_asyncio`` module's
   ``.AsyncioDebug`` section (3.14+).

``Layout.sources`` records which of these supplied each value.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import stat
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiobpf.collector import deadline
from aiobpf.collector.elf import ElfImage
from aiobpf.collector.layouts.constants import CONSTANTS, Constants
from aiobpf.collector.layouts.spec import (
    ASYNCIO,
    CORE,
    FIELDS,
    asyncio_debug_paths,
    debug_paths,
)
from aiobpf.collector.layouts.tables import TABLES

DEBUG_COOKIE = b"xdebugpy"
SUPPORTED_MINORS = tuple(sorted({key[:2] for key in TABLES}))


def table_for(version: tuple[int, int, int]) -> dict | None:
    """The generated table for ``version``: the reference build of the same minor
    version with the highest patch level not above it (layouts change at a patch
    release and stay), else the lowest one."""
    same = sorted(key for key in TABLES if key[:2] == version[:2])
    if not same:
        return None
    below = [key for key in same if key <= version]
    return TABLES[below[-1] if below else same[0]]


class LayoutError(Exception):
    """A value aiobpf needs is unknown for this build."""


@dataclass
class Layout:
    version: tuple[int, int, int]
    values: dict[str, int]
    sources: dict[str, str]
    consts: Constants
    free_threaded: bool = False
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> int:
        try:
            return self.values[name]
        except KeyError:
            v = ".".join(map(str, self.version))
            raise LayoutError(f"the layout of Python {v} lacks {name}") from None

    def has(self, name: str) -> bool:
        return name in self.values

    def source_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for src in self.sources.values():
            counts[src] = counts.get(src, 0) + 1
        return counts


def _spec_digest() -> str:
    text = repr([(f.name, f.binary, f.spellings, f.debug, f.adebug) for f in FIELDS])
    return f"{zlib.crc32(text.encode()):08x}"


def cache_dir() -> Path:
    env = os.environ.get("AIOBPF_CACHE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/aiobpf/layouts")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aiobpf" / "layouts"


MAX_OFFSET = 1 << 24          # offsets, sizes and bit positions: below 16 Mi
MAX_CACHE_FILE = 1 << 20


def _known_keys() -> dict[str, bool]:
    """Every key a DWARF extraction may produce -> whether it may be an enum value."""
    keys: dict[str, bool] = {}
    for f in FIELDS:
        is_enum = any(sp.startswith("enum ") for sp in f.spellings)
        keys[f.name] = is_enum
        if any(sp.startswith("bits ") for sp in f.spellings):
            keys[f.name + ".width"] = False
    keys.update(dict.fromkeys((f"dbg:{p}" for p in debug_paths()), False))
    keys.update(dict.fromkeys((f"adbg:{p}" for p in asyncio_debug_paths()), False))
    return keys


def plausible(values: object) -> dict[str, int] | None:
    """``values`` if it is what a DWARF extraction makes: known keys, integers in range
    (enum values: any 32-bit integer; everything else: 0 to 16 Mi); None otherwise."""
    if not isinstance(values, dict):
        return None
    known = _known_keys()
    for key, value in values.items():
        if key not in known or type(value) is not int:
            return None
        low, high = (-(1 << 31), 1 << 31) if known[key] else (0, MAX_OFFSET)
        if not low <= value < high:
            return None
    return values


def _private_dir(path: Path, create: bool) -> bool:
    """True when ``path`` is a directory of this user that nobody else may write
    (created 0700 when ``create``)."""
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _read_cache(path: Path) -> dict[str, int] | None:
    """The values cached in ``path``, when the file is this user's, nobody else may
    write it, and its content is plausible."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as stream:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or st.st_size > MAX_CACHE_FILE):
            return None
        try:
            return plausible(json.loads(stream.read(MAX_CACHE_FILE)))
        except ValueError:
            return None


def _write_cache(path: Path, values: dict[str, int]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(values, sort_keys=True))
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()   # a read-only cache only costs time


_extracting = threading.Lock()


@contextlib.contextmanager
def _one_extraction_at_a_time() -> Iterator[None]:
    """DWARF is extracted by one thread at a time: pyelftools holds a file's DIEs in
    memory (~90 MB for a 24 MB debug build), so the daemon's peak is one of them, not
    one per process examined at once; and a second process mapping the same file then
    finds the values in the cache.  The memory is handed back to the system after."""
    while not _extracting.acquire(timeout=0.1):
        deadline.check()
    try:
        yield
    finally:
        gc.collect()
        _malloc_trim()
        _extracting.release()


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)     # glibc: give freed heap pages back


def dwarf_values(image: ElfImage, binaries: set[str]) -> dict[str, int] | None:
    """Values from an image's DWARF, through the on-disk cache; None without DWARF."""
    if not image.has_debug_info:
        return None
    from aiobpf.collector.dwarf import DwarfError  # pyelftools' DWARF code: import on demand
    from aiobpf.collector.elf import NotElfError
    from aiobpf.collector.layouts.extract import extract

    directory = cache_dir()
    usable = _private_dir(directory, create=True)
    try:
        key = f"{image.digest}-{'-'.join(sorted(binaries))}-{_spec_digest()}"
    except NotElfError:
        return None
    path = directory / f"{key}.json"
    if usable:
        cached = _read_cache(path)
        if cached is not None:
            return cached
    with _one_extraction_at_a_time():
        cached = _read_cache(path) if usable else None
        if cached is not None:      # another thread extracted it meanwhile
            return cached
        try:
            found = extract(image, binaries)
        except DwarfError:
            return None
    # What a file's DWARF says only concerns the processes that map that very file;
    # still, an absurd value is dropped rather than used to read memory.
    values = plausible(found) or {k: v for k, v in found.items() if plausible({k: v})}
    if usable:
        _write_cache(path, values)
    return values


def _published(blob: bytes, layout: dict[str, int], prefix: str, attr: str
               ) -> dict[str, int]:
    """Values a published offsets struct holds, mapped to aiobpf's names."""
    out: dict[str, int] = {}
    for f in FIELDS:
        path = getattr(f, attr)
        where = layout.get(prefix + path) if path else None
        if where is None or where + 8 > len(blob):
            continue
        out[f.name] = struct.unpack_from("<Q", blob, where)[0]
    return out


def read_debug_offsets(core: ElfImage, dbg_layout: dict[str, int]
                       ) -> tuple[dict[str, int], int, bool] | None:
    """(values, PY_VERSION_HEX, free_threaded) from ``_Py_DebugOffsets``; None before 3.13."""
    sec = core.sections.get(".PyRuntime")
    addr = sec.addr if sec is not None else core.symbol("_PyRuntime")
    if addr is None:
        return None
    size = max((v for k, v in dbg_layout.items() if k.startswith("dbg:")), default=0) + 8
    blob = core.read_vaddr(addr, max(size, 24))
    if not blob.startswith(DEBUG_COOKIE):
        return None
    version, free_threaded = struct.unpack_from("<QQ", blob, 8)
    return _published(blob, dbg_layout, "dbg:", "debug"), version, bool(free_threaded)


def read_asyncio_debug(image: ElfImage, adbg_layout: dict[str, int]) -> dict[str, int] | None:
    """Values from the ``.AsyncioDebug`` section (3.14+); None when absent."""
    blob = image.section_data(".AsyncioDebug")
    if not blob:
        return None
    return _published(blob, adbg_layout, "adbg:", "adebug")


def resolve_layout(version: tuple[int, int, int], core: ElfImage, asyncio: ElfImage | None,
                   *, use_dwarf: bool = True,
                   debug_file: Callable[[ElfImage], ElfImage | None] | None = None) -> Layout:
    """Assemble the layout of one target (see the module docstring for precedence)."""
    minor = version[:2]
    values: dict[str, int] = {}
    sources: dict[str, str] = {}
    table = table_for(version)
    if table is not None:
        values.update(table["values"])
        sources.update(dict.fromkeys(table["values"], f"table {table['source']['python']}"))

    def merge(new: dict[str, int] | None, source: str) -> None:
        if new:
            values.update(new)
            sources.update(dict.fromkeys(new, source))

    if use_dwarf:
        images = [(core, {CORE} if asyncio is not None else {CORE, ASYNCIO})]
        if asyncio is not None:
            images.append((asyncio, {ASYNCIO}))
        for image, binaries in images:
            dwarf_image = image if image.has_debug_info else None
            if dwarf_image is None and debug_file is not None:
                dwarf_image = debug_file(image)
            if dwarf_image is not None:
                try:
                    merge(dwarf_values(dwarf_image, binaries), f"dwarf {dwarf_image.name}")
                finally:
                    if dwarf_image is not image:
                        dwarf_image.close()
    if not values:
        raise LayoutError(f"no layout is known for Python {'.'.join(map(str, version))}")

    layout = Layout(version, values, sources, CONSTANTS.get(minor, Constants()))
    published = read_debug_offsets(core, values)
    if published is not None:
        debug_values, hexversion, layout.free_threaded = published
        if hexversion >> 16 != (version[0] << 8 | version[1]):
            layout.notes.append(f"_Py_DebugOffsets says version {hexversion:#x}")
        merge(debug_values, "_Py_DebugOffsets")
    adebug = read_asyncio_debug(asyncio or core, values)
    merge(adebug, "AsyncioDebug")
    layout.values, layout.sources = values, sources
    return layout
