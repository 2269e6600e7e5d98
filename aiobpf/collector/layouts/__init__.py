"""CPython memory layouts: every version-specific offset aiobpf uses, in one place.

A ``Layout`` is assembled for one target from, in increasing precedence:

1. the generated table for its minor version (``tables.py``, from reference DWARF);
2. the DWARF of the target's own binaries (or of their separate debug files),
   when they carry it, cached by build-id because a scan takes seconds;
3. the offsets CPython publishes in the binaries themselves: ``_Py_DebugOffsets``
   at the start of ``.PyRuntime`` (3.13+) and the ``_asyncio`` module's
   ``.AsyncioDebug`` section (3.14+).

``Layout.sources`` records which of these supplied each value.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiobpf.collector.elf import ElfImage
from aiobpf.collector.layouts.constants import CONSTANTS, Constants
from aiobpf.collector.layouts.spec import ASYNCIO, CORE, FIELDS
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


def dwarf_values(image: ElfImage, binaries: set[str]) -> dict[str, int] | None:
    """Values from an image's DWARF, through the on-disk cache; None without DWARF."""
    if not image.has_debug_info:
        return None
    key = f"{image.build_id or image.path.name}-{'-'.join(sorted(binaries))}-{_spec_digest()}"
    path = cache_dir() / f"{key}.json"
    try:
        return {k: int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        pass
    from aiobpf.collector.dwarf import DwarfError  # pyelftools' DWARF code: import on demand
    from aiobpf.collector.layouts.extract import extract

    try:
        values = extract(image.stream, binaries)
    except DwarfError:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(values, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs time
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
                merge(dwarf_values(dwarf_image, binaries), f"dwarf {dwarf_image.name}")
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
