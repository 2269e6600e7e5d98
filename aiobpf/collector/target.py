"""Find the Python interpreter and the asyncio C module inside a running process.

Looks at ``/proc/PID/maps`` for the binary that holds ``_PyRuntime`` (the
executable or libpython) and for ``_asyncio`` (a shared module, or built into
the interpreter), reads the exact version, and assembles the layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from aiobpf.collector import deadline, procfs
from aiobpf.collector.elf import ElfImage, NotElfError, find_debug_file
from aiobpf.collector.files import Tree, UnsafeFile
from aiobpf.collector.layouts import SUPPORTED_MINORS, Layout, LayoutError, resolve_layout
from aiobpf.collector.procfs import Mapping, ProcessInfo

_PY_NAME = re.compile(r"python(\d)\.(\d+)")
_DEBUG_DIR = "/usr/lib/debug"
MAX_CORE_CANDIDATES = 8     # mapped files that may be the interpreter, looked at in turn


class NotPython(Exception):
    """The process runs no CPython interpreter that aiobpf can find."""


class UnsupportedPython(Exception):
    """A CPython aiobpf does not read (too old, too new, free-threaded)."""


class NoAsyncio(Exception):
    """The interpreter has not loaded the asyncio C module."""


@dataclass
class LoadedImage:
    """An ELF file mapped into the target, with the bias of its load address."""

    image: ElfImage
    path: str          # as the target sees it
    bias: int

    def addr(self, vaddr: int) -> int:
        return vaddr + self.bias


@dataclass
class Target:
    pid: int
    info: ProcessInfo
    version: tuple[int, int, int]
    core: LoadedImage
    asyncio: LoadedImage | None      # None: built into the interpreter
    layout: Layout
    runtime_addr: int
    maps: list[Mapping] = field(repr=False, default_factory=list)

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def debug_build(self) -> bool:
        return bool(re.search(r"python3\.\d+d\b|\.cpython-3\d+d-", self.core.path
                              + (self.asyncio.path if self.asyncio else "")))

    def close(self) -> None:
        self.core.image.close()
        if self.asyncio is not None:
            self.asyncio.image.close()


def _bias(image: ElfImage, mappings: list[Mapping]) -> int:
    if not image.is_pie:
        return 0
    first = min(mappings, key=lambda m: m.offset)
    for vaddr, _memsz, offset, _filesz in image.load_segments:
        if offset <= first.offset:
            base_vaddr = (vaddr - (offset - first.offset)) & ~0xFFF
            return first.start - base_vaddr
    return first.start - first.offset


def _by_file(maps: list[Mapping]) -> dict[str, list[Mapping]]:
    files: dict[str, list[Mapping]] = {}
    for m in maps:
        if m.is_file:
            files.setdefault(m.path, []).append(m)
    return files


def _open(pid: int, mappings: list[Mapping]) -> ElfImage:
    first = min(mappings, key=lambda m: m.offset)
    name = Path(first.path).name
    try:
        fd, path = procfs.open_mapped_file(pid, first)
    except UnsafeFile as exc:
        raise NotElfError(str(exc)) from exc
    return ElfImage.from_fd(fd, path, name)


def _version_from_name(path: str) -> tuple[int, int] | None:
    found = _PY_NAME.search(Path(path).name)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _find_core(pid: int, info: ProcessInfo, files: dict[str, list[Mapping]]
               ) -> tuple[LoadedImage, int] | None:
    names = [p for p in files if p == info.exe or "python" in Path(p).name]
    names.sort(key=lambda p: ("libpython" not in p, p != info.exe))
    for path in names[:MAX_CORE_CANDIDATES]:
        deadline.check()
        try:
            image = _open(pid, files[path])
        except NotElfError:
            continue
        try:
            runtime = image.symbol("_PyRuntime")
            bias = _bias(image, files[path])
        except NotElfError:
            runtime = None
        if runtime is None:
            image.close()
            continue
        loaded = LoadedImage(image, path, bias)
        return loaded, loaded.addr(runtime)
    return None


def _debug_file_finder(pid: int, extra_dirs: list[Path]):
    """Separate debug files are looked for in the directories the operator named, in
    the target's root (links resolved inside it), then on the host; never through a
    link that leaves the directory."""
    dirs = [*(Tree(d) for d in extra_dirs), Tree.of_process(pid, _DEBUG_DIR),
            Tree(Path(_DEBUG_DIR))]
    return lambda image: find_debug_file(image, dirs)


def open_target(pid: int, *, use_dwarf: bool = True, debug_dirs: list[Path] | None = None,
                time_limit: float | None = None) -> Target:
    """Discover everything aiobpf needs to read the asyncio state of ``pid``.

    Within ``time_limit`` seconds (else ``deadline.Overrun``); a binary that cannot
    be read safely makes the process ``UnsupportedPython``."""
    with deadline.limit(time_limit):
        try:
            return _open_target(pid, use_dwarf, debug_dirs)
        except NotElfError as exc:
            raise UnsupportedPython(f"process {pid}: {exc}") from exc


def _open_target(pid: int, use_dwarf: bool, debug_dirs: list[Path] | None) -> Target:
    info = procfs.process_info(pid)
    maps = procfs.read_maps(pid)
    files = _by_file(maps)
    found = _find_core(pid, info, files)
    if found is None:
        guess = _version_from_name(info.exe)
        if guess is not None and guess < (3, 11):
            raise UnsupportedPython(f"Python {guess[0]}.{guess[1]}")
        raise NotPython(f"process {pid} ({info.name}) runs no CPython interpreter")
    core, runtime_addr = found
    try:
        hexversion = core.image.py_version_hex
    except BaseException:
        core.image.close()
        raise
    if hexversion is None:
        guess = _version_from_name(core.path) or _version_from_name(info.exe)
        core.image.close()
        label = f"Python {guess[0]}.{guess[1]}" if guess else "a Python older than 3.11"
        raise UnsupportedPython(label)
    version = (hexversion >> 24, (hexversion >> 16) & 0xFF, (hexversion >> 8) & 0xFF)
    label = ".".join(map(str, version))
    if version[:2] < (3, 11):
        core.image.close()
        raise UnsupportedPython(f"Python {label}")
    if version[:2] > SUPPORTED_MINORS[-1]:
        core.image.close()
        raise UnsupportedPython(f"Python {label} (newer than this aiobpf knows)")

    asyncio = None
    try:
        for path, mappings in files.items():
            if Path(path).name.startswith("_asyncio."):
                image = _open(pid, mappings)
                asyncio = LoadedImage(image, path, _bias(image, mappings))
                break
        if asyncio is None and not _has_builtin_asyncio(core.image):
            raise NoAsyncio(f"process {pid} (Python {label}) has not loaded the asyncio C "
                            "module")
        try:
            layout = resolve_layout(version, core.image, asyncio.image if asyncio else None,
                                    use_dwarf=use_dwarf,
                                    debug_file=_debug_file_finder(pid, debug_dirs or []))
        except LayoutError as exc:
            raise UnsupportedPython(f"Python {label}: {exc}") from exc
        if layout.free_threaded or "t" in _abiflags(core.path):
            raise UnsupportedPython(f"Python {label} free-threaded build")
    except BaseException:
        core.image.close()
        if asyncio is not None:
            asyncio.image.close()
        raise
    return Target(pid, info, version, core, asyncio, layout, runtime_addr, maps)


def _abiflags(path: str) -> str:
    found = re.search(r"python3\.\d+([a-z]*)", Path(path).name)
    return found.group(1) if found else ""


def _has_builtin_asyncio(image: ElfImage) -> bool:
    return ".AsyncioDebug" in image.sections or bool(image.symbols({"PyInit__asyncio"}))
