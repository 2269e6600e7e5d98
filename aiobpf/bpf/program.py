"""capture.bpf.c compiled and loaded with bcc: the limits compiled into its maps,
its programs and how each is attached, and the one error BPF capture raises.

bcc raises bare ``Exception``s and writes its reasons on stderr from C:
``bcc_errors`` and ``load`` turn both into a one-line ``CaptureUnavailable``.  A
load compares the maps as compiled with aiobpf/bpf/abi.py (``abi.differences``)
before any is read.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiobpf.bpf import abi
from aiobpf.bpf.uprobes import ENTRY, RETURN, Uprobes, choose
from aiobpf.collector.probes import STEP_WRAPPER_CALL, TASK_INIT, TASK_WAKEUP

BPF_DIR = Path(__file__).resolve().parent
SOURCE = BPF_DIR / "capture.bpf.c"
# The programs of each probed function, with how each is attached.
HANDLERS: dict[str, tuple[tuple[str, int], ...]] = {
    TASK_WAKEUP: (("on_task_wakeup", ENTRY),),
    STEP_WRAPPER_CALL: (("on_step_wrapper", ENTRY),),
    TASK_INIT: (("on_task_init", ENTRY), ("on_task_init_return", RETURN)),
}
CALIBRATION = "on_calibrate"                        # an empty uprobe program
# The programs on raw syscall tracepoints, by tracepoint: when a loop waits and wakes.
WAIT_HOOKS = {"sys_enter": "on_raw_enter", "sys_exit": "on_raw_exit"}


@dataclass(frozen=True)
class MapLimits:
    """Entries of the BPF maps (compiled in: bcc sizes maps at load).  ``records`` and
    ``targets`` take kernel memory as they fill (~1 KiB per record); ``threads`` (an
    LRU map) and the ring buffer are allocated whole.  The defaults keep the kernel
    memory of a daemon under ~18 MiB however many tasks it traces; a task without a
    record is read from memory instead (counted: ``records_dropped``)."""

    records: int = 16384
    threads: int = 16384
    targets: int = 1024
    ring_pages: int = 1024    # step events (aiobpf trace); a power of two

    def cflags(self) -> list[str]:
        return [f"-DMAX_RECORDS={self.records}", f"-DMAX_THREADS={self.threads}",
                f"-DMAX_TARGETS={self.targets}", f"-DRING_PAGES={self.ring_pages}"]


# A daemon never asks for step events: one page of ring buffer, not 4 MiB.
DAEMON_LIMITS = MapLimits(ring_pages=1)
# aiobpf trace: 64 MiB of ring, ~100,000 step events (664 bytes each), over half a second
# of a ping-pong's steps at full speed while the reader is busy or not scheduled.
TRACE_LIMITS = MapLimits(ring_pages=16384)


class CaptureUnavailable(Exception):
    """BPF capture cannot run here, or not for one file (no bcc, no privileges, a probe
    that could not be placed).  ``kind`` names the failure in ``aiobpf_errors_total``:
    ``bpf_load`` (the programs), ``attach`` (probes or hooks), ``probe_file_changed``
    (the process no longer maps the file that was verified), ``too_many_files``
    (FileLimits)."""

    def __init__(self, message: str, kind: str = "bpf_load") -> None:
        super().__init__(message)
        self.kind = kind


_NEEDS_CAPS = " (tracing programs need CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)"


@contextmanager
def bcc_errors(kind: str, what: str) -> Iterator[None]:
    """Turn what bcc raises (bare ``Exception``s, ``OSError``s) into a one-line
    ``CaptureUnavailable`` of ``kind``."""
    try:
        yield
    except CaptureUnavailable:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if "super-user" in reason or "not permitted" in reason:
            reason = "operation not permitted" + _NEEDS_CAPS
        raise CaptureUnavailable(f"{what}: {reason}", kind) from exc


@contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Collect what C code (bcc, clang) writes on file descriptor 2 meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    lines: list[str] = []
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())


_MADV_DONTNEED = 4
_MADV_PAGEOUT = 21  # Linux 5.4+
_COMPILER_LIBS = ("libLLVM", "libclang")


def _release_compiler_memory() -> None:
    """After the compile, give back what clang and LLVM used: the heap glibc would keep
    (~30 MB) and their code pages (~80 MB of file-backed RSS that a long-running daemon
    never runs again; the kernel reads them back if a later compile needs them).  Their
    code (never written) is dropped from this process with MADV_DONTNEED, which works
    even while another process maps the same libraries (MADV_PAGEOUT leaves shared
    pages in place: measured 116 MB of RSS against 44 MB); the rest of their read-only
    mappings (some hold relocated data) are only paged out."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ct.CDLL("libc.so.6", use_errno=True)
        libc.malloc_trim(0)
        libc.madvise.argtypes = [ct.c_void_p, ct.c_size_t, ct.c_int]
        for line in Path("/proc/self/maps").read_text().splitlines():
            fields = line.split()
            if len(fields) < 6 or not any(lib in fields[5] for lib in _COMPILER_LIBS):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if fields[1] == "r-xp":
                libc.madvise(start, end - start, _MADV_DONTNEED)
            else:
                libc.madvise(start, end - start, _MADV_PAGEOUT)


@dataclass
class Program:
    """capture.bpf.c as loaded: bcc's object, its library and the maps user space reads."""

    bpf: Any                 # bcc.BPF
    lib: Any                 # bcc.lib (libbcc through ctypes)
    tables: dict[str, Any]   # abi.MAPS's maps, with abi's types
    uprobes: Uprobes         # how its uprobe programs are placed (links or perf events)


def load(limits: MapLimits, uprobes: str | None = None) -> Program:
    """Compile capture.bpf.c with ``limits`` and load every program: a load failure
    (privileges, verifier) is one clear failure here rather than one per process
    later, and verifying one (up to a second) never happens while a file's first
    probes are in place.  Then compile-time drift between capture.h and abi.py is
    refused.  ``uprobes``: the kind of uprobe (uprobes.PERF forces perf events; by
    default links where the kernel has them).  Raises CaptureUnavailable; nothing stays
    loaded after a failure."""
    try:
        from bcc import BPF  # Debian's python3-bpfcc; slow to import, so only here
    except ImportError as exc:
        raise CaptureUnavailable("bcc is not installed (apt install python3-bpfcc)") from exc
    bpf: Any = None
    drift: list[str] = []
    with _stderr_captured() as said:
        try:
            bpf = BPF(src_file=str(SOURCE).encode(),
                      cflags=[f"-I{BPF_DIR}", "-Wno-unused-function", *limits.cflags()])
            lib = __import__("bcc").lib
            placed = choose(bpf, lib, CALIBRATION, uprobes)
            programs = [name for handlers in HANDLERS.values() for name, _ in handlers]
            for name in (*programs, CALIBRATION):
                bpf.load_func(name.encode(), BPF.KPROBE, attach_type=placed.load_type)
            for name in WAIT_HOOKS.values():
                bpf.load_func(name.encode(), BPF.RAW_TRACEPOINT)
            drift = _drift(bpf, lib)
            tables = {} if drift else {
                name: bpf.get_table(name.encode(), keytype=key, leaftype=value)
                for name, (key, value) in abi.MAPS.items()}
        except Exception as exc:  # bcc raises bare Exceptions
            failure: Exception | None = exc
        else:
            failure = None
    if failure is None and not drift:
        _release_compiler_memory()
        return Program(bpf, lib, tables, placed)
    if bpf is not None:
        with contextlib.suppress(Exception):   # bcc: bare Exceptions
            bpf.cleanup()
    if failure is None:
        raise CaptureUnavailable("the BPF maps as compiled differ from aiobpf/bpf/abi.py "
                                 "(capture.h changed without it): " + "; ".join(drift[:4]))
    # bcc writes the reason on stderr (from C); say it in one line instead.
    reason = next((line for line in said if "error" in line.lower()
                   or "not permitted" in line.lower()), str(failure))
    if "not permitted" in reason or "super-user" in reason:
        reason += _NEEDS_CAPS
    raise CaptureUnavailable(f"the BPF programs did not load: {reason}") from failure


def _drift(bpf: Any, lib: Any) -> list[str]:
    """Where the maps bcc compiled differ from abi.py's types (bcc's own descriptions
    of their keys and values, as clang laid them out)."""
    def desc(describe: Any, name: str) -> str:
        return (describe(bpf.module, name.encode()) or b"").decode(errors="replace")

    return [difference for name in abi.MAPS for difference in abi.differences(
        name, desc(lib.bpf_table_key_desc, name), desc(lib.bpf_table_leaf_desc, name))]
