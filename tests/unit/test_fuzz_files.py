"""The ELF, DWARF, probe-site and layout code fed malformed files: bounded, no crash.

Seeds are real modules (Debian's stripped ``_asyncio`` and its unstripped debug build)
and small modules built here with DWARF, some already broken (a typedef that names
itself, an anonymous member of its own struct's type).  Hypothesis overwrites header
fields, section headers, DWARF bytes and random bytes; every entry point then must
return or raise one of the errors its documentation names for a malformed file --
never another exception (not even another of aiobpf's own: a ``LayoutError`` from
a misspelled key is a bug, not a malformed file), never hang (a watchdog turns a
hang into a failure), never allocate more than ``MEMORY_BOUND`` (tracemalloc's peak)
or raise MemoryError.  ``AIOBPF_FUZZ_EXAMPLES`` sets the number of examples (default
400: about 25 s; 3000 took 170 s).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiobpf.collector.dwarf import DwarfError, DwarfTypes
from aiobpf.collector.elf import ElfImage, NotElfError, find_debug_file
from aiobpf.collector.layouts import resolve_layout
from aiobpf.collector.layouts.extract import extract
from aiobpf.collector.layouts.spec import ASYNCIO, CORE
from aiobpf.collector.probes import find_step_sites
from tests.crafted_elf import build_module, patch_self_references

pytestmark = pytest.mark.fuzz

# What each entry point may raise on a malformed file, as documented: the ELF reader
# NotElfError; DWARF walks DwarfError (or NotElfError from the sections under them).
# resolve_layout and find_debug_file turn both into "no DWARF values" / "no debug
# file"; resolve_layout raises LayoutError only when no table knows the version,
# which cannot happen for the versions asked here.
ELF = (NotElfError,)
DWARF = (NotElfError, DwarfError)
EXAMPLES = int(os.environ.get("AIOBPF_FUZZ_EXAMPLES", "400"))
MEMORY_BOUND = 64 << 20          # the seeds are < 300 KB; nothing may balloon
EXAMPLE_TIME_BOUND_S = 10.0      # one example, all entry points (a hang fails at 30 s)
DEBIAN_ASYNCIO = Path("/usr/lib/python3.11/lib-dynload")
INTERESTING = (0, 1, 0x7F, 0xFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**63,
               2**64 - 1)


def _seed_paths(tmp: Path) -> dict[str, Path]:
    seeds = {
        "debian-asyncio": DEBIAN_ASYNCIO / "_asyncio.cpython-311-x86_64-linux-gnu.so",
        "debian-asyncio-d": DEBIAN_ASYNCIO / "_asyncio.cpython-311d-x86_64-linux-gnu.so",
    }
    for name, path in seeds.items():
        if not path.exists():
            pytest.fail(f"{path} is missing ({name}: apt install python3.11-dbg)")
    seeds["module"] = build_module(tmp / "module.so")
    seeds["self-referencing"] = build_module(tmp / "selfref.so")
    patch_self_references(seeds["self-referencing"])
    return seeds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("seeds")
    return {name: path.read_bytes() for name, path in _seed_paths(tmp).items()}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOBPF_CACHE_DIR", str(tmp_path / "layouts"))


@contextlib.contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    """A hang becomes a failure instead of a stuck CI job."""
    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s: an unbounded loop")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _entry_points(image: ElfImage) -> list[tuple[Callable[[], object],
                                                  tuple[type[Exception], ...]]]:
    """(call, the exceptions it is documented to raise on a malformed file)."""
    return [
        (lambda: image.build_id, ELF), (lambda: image.debuglink, ELF),
        (lambda: image.debuglink_crc, ELF), (lambda: image.load_segments, ELF),
        (lambda: image.is_pie, ELF),
        (lambda: image.symbols({"PyInit__asyncio", "task_wakeup", "_PyRuntime"}), ELF),
        (lambda: image.py_version_hex, ELF), (lambda: image.section_data(".rodata"), ELF),
        (lambda: image.read_vaddr(0x1000, 64), ELF), (lambda: image.digest, ELF),
        (lambda: find_step_sites(image, None, 128), ELF),
        (lambda: find_step_sites(image, image, 128), ELF),
        (lambda: extract(image, {CORE, ASYNCIO}), DWARF),
        (lambda: DwarfTypes(image, ["FutureObj"]).member("FutureObj", "fut_state"), DWARF),
        (lambda: resolve_layout((3, 11, 2), image, image), ELF),
        (lambda: resolve_layout((3, 14, 0), image, None), ELF),
        (lambda: find_debug_file(image, [image.path.parent]), ELF),
    ]


def examine(data: bytes) -> None:
    """Every entry point on ``data``: only aiobpf's own errors, in bounded time and memory."""
    started = time.monotonic()
    tracemalloc.start()
    try:
        with _watchdog(30.0):
            try:
                image = ElfImage.from_stream(io.BytesIO(data), Path("/nonexistent/fuzzed.so"))
            except NotElfError:
                return
            try:
                for call, allowed in _entry_points(image):
                    with contextlib.suppress(*allowed):
                        call()
            finally:
                image.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"{peak} bytes allocated"
    assert time.monotonic() - started < EXAMPLE_TIME_BOUND_S


def _elf_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of the header and section-header fields worth breaking."""
    fields = [(0x18, 8), (0x20, 8), (0x28, 8), (0x36, 2), (0x38, 2), (0x3A, 2), (0x3C, 2),
              (0x3E, 2)]
    if len(data) < 64:
        return fields
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shnum, = struct.unpack_from("<H", data, 0x3C)
    for i in range(min(shnum, 64)):
        base = shoff + 64 * i
        if base + 64 <= len(data):
            # sh_type, sh_flags, sh_offset, sh_size, sh_link, sh_entsize
            fields += [(base + 4, 4), (base + 8, 8), (base + 24, 8), (base + 32, 8),
                       (base + 40, 4), (base + 56, 8)]
    return fields


@st.composite
def mutated(draw, seeds: dict[str, bytes]) -> bytes:
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    fields = _elf_fields(bytes(data))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["field", "field", "bytes", "word"]))
        if kind == "field":
            offset, width = draw(st.sampled_from(fields))
            value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, len(data) * 2),
                                   st.integers(0, 2 ** (8 * width) - 1)))
            data[offset:offset + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        elif kind == "bytes":
            offset = draw(st.integers(0, len(data) - 1))
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[offset:offset + len(chunk)] = chunk
        else:   # a 4-byte word anywhere (DWARF references, lengths, abbrev codes)
            offset = draw(st.integers(0, len(data) - 4))
            value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, len(data))))
            struct.pack_into("<I", data, offset, value % 2**32)
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


def test_the_seeds_are_read(seeds: dict[str, bytes]) -> None:
    """The unbroken seeds give what they should (the fuzzing starts from working files)."""
    for name in ("debian-asyncio", "debian-asyncio-d"):
        image = ElfImage.from_stream(io.BytesIO(seeds[name]), Path(name))
        sites, notes = find_step_sites(image, None, 128)
        assert set(sites) == {"task_wakeup", "TaskStepMethWrapper_call"}, notes
    values = extract(ElfImage.from_stream(io.BytesIO(seeds["module"]), Path("m")), {ASYNCIO})
    assert values["task.state"] == 24 and values["enum.STATE_PENDING"] == 7


def test_self_referencing_dwarf_ends(seeds: dict[str, bytes]) -> None:
    image = ElfImage.from_stream(io.BytesIO(seeds["self-referencing"]), Path("selfref.so"))
    with _watchdog(10.0):
        values = extract(image, {ASYNCIO})
        with pytest.raises(DwarfError, match="nested"):
            DwarfTypes(image, ["FutureObj"]).member("FutureObj", "fut_state")
    assert "task.state" not in values and values["enum.STATE_PENDING"] == 7


@pytest.mark.parametrize("section", [".debug_info", ".debug_str", ".rela.dyn", ".rodata",
                                     ".dynsym"])
@pytest.mark.parametrize("size", [2**31, 2**40, 2**64 - 1])
def test_a_huge_section_size_is_refused_before_reading(seeds: dict[str, bytes], section: str,
                                                       size: int) -> None:
    data = bytearray(seeds["debian-asyncio-d"])
    image = ElfImage.from_stream(io.BytesIO(bytes(data)), Path("x"))
    header = next(i for i, name in enumerate(image.sections) if name == section)
    image.close()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    # the sections dict keeps file order: index i is section i (index 0 is the null one)
    struct.pack_into("<Q", data, shoff + 64 * header + 32, size)
    with pytest.raises(NotElfError):
        ElfImage.from_stream(io.BytesIO(bytes(data)), Path("x"))
    examine(bytes(data))


def test_a_compressed_section_cannot_expand_without_bound(seeds: dict[str, bytes]) -> None:
    """A SHF_COMPRESSED section whose header claims a huge decompressed size."""
    data = bytearray(seeds["debian-asyncio-d"])
    image = ElfImage.from_stream(io.BytesIO(bytes(data)), Path("x"))
    index = list(image.sections).index(".debug_str")
    sec = image.sections[".debug_str"]
    image.close()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    flags, = struct.unpack_from("<Q", data, shoff + 64 * index + 8)
    struct.pack_into("<Q", data, shoff + 64 * index + 8, flags | 0x800)   # SHF_COMPRESSED
    struct.pack_into("<IIQQ", data, sec.offset, 1, 0, 2**40, 1)           # Elf64_Chdr
    with pytest.raises(NotElfError, match="would take"):
        ElfImage.from_stream(io.BytesIO(bytes(data)), Path("x"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_malformed_files_end_cleanly(seeds: dict[str, bytes], data: st.DataObject) -> None:
    examine(data.draw(mutated(seeds)))
