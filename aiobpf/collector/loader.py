"""Load aiobpf/bpf/capture.bpf.c with bcc, attach its probes, and read its maps.

One ``Capture`` serves any number of processes and Python versions: probes are
attached once per file (a uprobe belongs to an inode, not a process), and a
process is traced when its per-process configuration is in the ``targets``
map.  Probes are perf-event based: the kernel removes them when aiobpf's file
descriptors close, so nothing outlives aiobpf, even after SIGKILL.

A probed file is opened once, checked to be the very file the process maps and
aiobpf parsed (device, inode, build-id), and held open: every attach, the first and
each window's, goes through that descriptor (``/proc/self/fd/N``), never again
through a path a traced process could point at another file.  bcc raises bare
``Exception``s: every call into it is wrapped, and a failure leaves nothing attached.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import os
import stat
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiobpf.collector import files, procfs
from aiobpf.collector.elf import ElfImage
from aiobpf.collector.probes import (
    STEP_WRAPPER_CALL,
    TASK_INIT,
    TASK_WAKEUP,
    ProbeSite,
    find_step_sites,
)
from aiobpf.collector.target import LoadedImage, Target

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"

MAX_DEPTH = 32
MAX_RESUME_OPS = 4
HIST_SLOTS = 64
BATCH_ENTRIES = 1024   # map entries read per system call
_ENTRY, _RETURN = 0, 1   # enum bpf_probe_attach_type
# The programs of each probed function, with how each is attached.
_HANDLERS: dict[str, tuple[tuple[str, int], ...]] = {
    TASK_WAKEUP: (("on_task_wakeup", _ENTRY),),
    STEP_WRAPPER_CALL: (("on_step_wrapper", _ENTRY),),
    TASK_INIT: (("on_task_init", _ENTRY), ("on_task_init_return", _RETURN)),
}


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
# aiobpf trace: 64 MiB of ring, ~100,000 step events (656 bytes each), over half a second
# of a ping-pong's steps at full speed while the reader is busy or not scheduled.
TRACE_LIMITS = MapLimits(ring_pages=16384)


@dataclass(frozen=True)
class FileLimits:
    """Distinct files with probes at once (None: no limit).  Removing a file's probes
    takes the kernel ~0.1 s per probe, one after another (two probes per file, four on
    3.12+: Task.__init__'s entry and return), at every window's end and when aiobpf
    stops: a user who maps many copies of _asyncio must not make that unbounded.  Files
    owned by a user other than root count against that owner's own share too, so one
    user cannot take the probes from everyone else."""

    files: int | None = None
    per_owner: int | None = None

    def refuses(self, owner: int, owners: list[int]) -> str:
        """Why a new file of ``owner`` gets no probes, with files of ``owners`` probed
        already ("" when it may)."""
        if self.files is not None and len(owners) >= self.files:
            return f"{len(owners)} files have probes already (at most {self.files})"
        if owner != 0 and self.per_owner is not None and owners.count(owner) >= self.per_owner:
            return (f"{owners.count(owner)} files of uid {owner} have probes already (at most "
                    f"{self.per_owner} per user other than root)")
        return ""


# The daemon's: 32 files take ~7 s to detach at stop (~15 s on 3.12+); 2 per user take
# 0.4 s (0.9 s).
DAEMON_FILES = FileLimits(files=32, per_owner=2)


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
def _bcc(kind: str, what: str) -> Iterator[None]:
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


# -- the structures of capture.h ------------------------------------------------
class TargetConfig(ct.Structure):
    _fields_ = [
        ("ob_type", ct.c_uint32),
        ("task_coro", ct.c_uint32), ("task_name", ct.c_uint32),
        ("task_fut_waiter", ct.c_uint32), ("task_awaited_by", ct.c_uint32),
        ("task_awaited_by_is_set", ct.c_uint32), ("task_state", ct.c_uint32),
        ("wrapper_task", ct.c_uint32),
        ("gen_frame_state", ct.c_uint32), ("gen_iframe", ct.c_uint32),
        ("frame_code", ct.c_uint32), ("frame_instr", ct.c_uint32), ("frame_stack", ct.c_uint32),
        ("frame_localsplus", ct.c_uint32), ("gen_span", ct.c_uint32), ("task_span", ct.c_uint32),
        ("gen_min_span", ct.c_uint32),
        ("st_created", ct.c_int8), ("st_executing", ct.c_int8), ("st_suspended", ct.c_int8),
        ("st_yf", ct.c_int8), ("st_yf_locked", ct.c_int8), ("st_cleared", ct.c_int8),
        ("stack_is_pointer", ct.c_uint8), ("yf_by_oparg", ct.c_uint8), ("yf_depth", ct.c_uint8),
        ("resume_offset", ct.c_uint8), ("trace", ct.c_uint8), ("pad0", ct.c_uint8),
        ("resume_ops", ct.c_uint8 * MAX_RESUME_OPS),
        ("ref_clear", ct.c_uint64), ("int_tag", ct.c_uint64),
        ("coro_type", ct.c_uint64), ("gen_type", ct.c_uint64), ("asyncgen_type", ct.c_uint64),
        ("pending_state", ct.c_uint64), ("epoch_ns", ct.c_uint64),
    ]


class FrameRef(ct.Structure):
    _fields_ = [("code", ct.c_uint64), ("instr", ct.c_uint64)]


class TaskRecord(ct.Structure):
    _fields_ = [
        ("task", ct.c_uint64), ("coro", ct.c_uint64), ("name", ct.c_uint64),
        ("fut_waiter", ct.c_uint64), ("awaited_by", ct.c_uint64), ("awaited", ct.c_uint64),
        ("taken_ns", ct.c_uint64), ("step_start_ns", ct.c_uint64),
        ("wake_delay_ns", ct.c_uint64), ("steps", ct.c_uint64), ("step_ns", ct.c_uint64),
        ("nested_ns", ct.c_uint64),
        ("pid", ct.c_uint32), ("tid", ct.c_uint32), ("depth", ct.c_uint32),
        ("state", ct.c_uint8), ("awaited_by_is_set", ct.c_uint8), ("truncated", ct.c_uint8),
        ("eager", ct.c_uint8), ("signature", ct.c_uint64),
        ("frames", FrameRef * MAX_DEPTH),
        ("kinds", ct.c_uint8 * MAX_DEPTH),
    ]


FRAME_KINDS = ("coroutine", "generator", "async_generator")  # enum frame_kind


class TargetStats(ct.Structure):
    _fields_ = [
        ("steps", ct.c_uint64), ("captures", ct.c_uint64),
        ("read_errors", ct.c_uint64), ("events_lost", ct.c_uint64),
        ("finished", ct.c_uint64), ("step_ns_sum", ct.c_uint64), ("delay_ns_sum", ct.c_uint64),
        ("prog_ns_sum", ct.c_uint64), ("records_dropped", ct.c_uint64),
        ("created", ct.c_uint64), ("eager_steps", ct.c_uint64),
        ("step_hist", ct.c_uint64 * HIST_SLOTS), ("delay_hist", ct.c_uint64 * HIST_SLOTS),
        ("depth_hist", ct.c_uint64 * (MAX_DEPTH + 1)), ("wrapper_steps", ct.c_uint64),
    ]


class TargetValue(ct.Structure):
    """struct target: settings from user space, then the programs' counts."""

    _fields_ = [("cfg", TargetConfig), ("stats", TargetStats)]


class TaskKey(ct.Structure):
    _fields_ = [("pid", ct.c_uint32), ("pad", ct.c_uint32), ("task", ct.c_uint64)]


class ThreadState(ct.Structure):
    _fields_ = [("task", ct.c_uint64), ("start_ns", ct.c_uint64), ("woke_ns", ct.c_uint64),
                ("delay_ns", ct.c_uint64), ("nested_ns", ct.c_uint64), ("pid", ct.c_uint32),
                ("pad", ct.c_uint32)]


CAPTURE_SUSPENDED, CAPTURE_FINISHED, CAPTURE_RUNNING, CAPTURE_CREATED = 1, 2, 3, 4
# The maps, with the ctypes of their keys and values (bcc cannot decode int8 fields).
_TABLES: dict[str, tuple[Any, Any]] = {
    "targets": (ct.c_uint32, TargetValue),
    "records": (TaskKey, TaskRecord),
    "threads": (ct.c_uint32, ThreadState),
}


def target_config(target: Target, trace: bool = False) -> TargetConfig:
    """The per-process settings of the BPF programs, from the target's layout."""
    L = target.layout.values
    c = target.layout.consts
    cfg = TargetConfig()
    cfg.ob_type = L["object.type"]
    cfg.task_coro, cfg.task_name = L["task.coro"], L["task.name"]
    cfg.task_fut_waiter, cfg.task_state = L["task.fut_waiter"], L["task.state"]
    cfg.task_awaited_by = L.get("task.awaited_by", 0)
    cfg.task_awaited_by_is_set = L.get("task.awaited_by_is_set", 0)
    cfg.wrapper_task = L["stepwrapper.task"]
    cfg.gen_frame_state, cfg.gen_iframe = L["gen.frame_state"], L["gen.iframe"]
    cfg.frame_code, cfg.frame_instr = L["frame.code"], L["frame.instr_ptr"]
    cfg.stack_is_pointer = int("frame.stackpointer" in L)
    cfg.frame_stack = L["frame.stackpointer"] if cfg.stack_is_pointer else L["frame.stacktop"]
    cfg.frame_localsplus = L["frame.localsplus"]
    # A generator's header, its frame and the first slots of the frame's locals and
    # stack, where the awaited object usually is: one read instead of two.
    cfg.gen_span = min(cfg.gen_iframe + cfg.frame_localsplus + 8 * 16, 504)
    cfg.gen_min_span = max(cfg.gen_frame_state + 1, cfg.gen_iframe + 8 + max(
        cfg.frame_code, cfg.frame_instr, cfg.frame_stack))
    cfg.task_span = max(cfg.task_coro, cfg.task_name, cfg.task_fut_waiter, cfg.task_state,
                        cfg.task_awaited_by, cfg.task_awaited_by_is_set) + 8
    cfg.st_created, cfg.st_executing = L["enum.FRAME_CREATED"], L["enum.FRAME_EXECUTING"]
    cfg.st_suspended, cfg.st_cleared = L["enum.FRAME_SUSPENDED"], L["enum.FRAME_CLEARED"]
    yf = L.get("enum.FRAME_SUSPENDED_YIELD_FROM", 127)
    cfg.st_yf = yf
    cfg.st_yf_locked = L.get("enum.FRAME_SUSPENDED_YIELD_FROM_LOCKED", yf)
    cfg.yf_by_oparg = int("enum.FRAME_SUSPENDED_YIELD_FROM" not in L)
    cfg.yf_depth = c.yield_from_depth
    cfg.resume_offset = c.resume_offset
    ops = sorted(c.resume_opcodes)[:MAX_RESUME_OPS]
    ops += [ops[0] if ops else 0] * (MAX_RESUME_OPS - len(ops))
    cfg.resume_ops = (ct.c_uint8 * MAX_RESUME_OPS)(*ops)
    cfg.ref_clear = ~c.stackref_clear & 0xFFFF_FFFF_FFFF_FFFF
    cfg.int_tag = c.stackref_int_tag or 0
    types = target.core.image.symbols({"PyCoro_Type", "PyGen_Type", "PyAsyncGen_Type"})
    cfg.coro_type = target.core.addr(types["PyCoro_Type"])
    cfg.gen_type = target.core.addr(types["PyGen_Type"])
    cfg.asyncgen_type = target.core.addr(types["PyAsyncGen_Type"])
    cfg.pending_state = L["enum.STATE_PENDING"]
    cfg.trace = int(trace)
    return cfg


def counts_creations(target: Target) -> bool:
    """Whether Task.__init__ is probed (3.12+, where tasks may start eagerly in it)."""
    return target.version[:2] >= (3, 12)


@dataclass
class Attachment:
    """Probes placed for one process: which functions, where, found how."""

    pid: int
    sites: dict[str, ProbeSite] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    file: tuple[int, int] | None = None   # (device, inode) of the probed file
    ranges: tuple[tuple[int, int], ...] = ()   # where the process maps it (start, end)

    @property
    def active(self) -> bool:
        return bool(self.sites)

    @property
    def counts_creations(self) -> bool:
        """Tasks created (and eager first steps) are counted by the programs."""
        return TASK_INIT in self.sites


@dataclass
class ProbedFile:
    """A file with probe sites, held open from the moment it was verified."""

    fd: int                                   # O_RDONLY, verified: what every attach uses
    sites: dict[str, ProbeSite]
    owner: int = 0                            # the file's uid (FileLimits)
    perf_fds: list[int] = field(default_factory=list)   # [] while paused
    since: int = 0                            # CLOCK_MONOTONIC ns of the last attach

    @property
    def path(self) -> str:
        """The held file, for the kernel's path lookup: the magic link leads to the
        very inode held, whatever the traced processes map meanwhile."""
        return f"/proc/self/fd/{self.fd}"


_BUILD_ID_NOTE_MAX = 1024   # bytes of .note.gnu.build-id read back through the held file
_NT_GNU_BUILD_ID = 3


def _file_id(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _build_id_matches(fd: int, image: ElfImage) -> bool:
    """Whether the build-id note read through ``fd`` is the one ``image`` was parsed
    with (True when the image has none to compare)."""
    section = image.sections.get(".note.gnu.build-id")
    expected = image.build_id
    if section is None or not expected:
        return True
    try:
        data = os.pread(fd, min(section.size, _BUILD_ID_NOTE_MAX), section.offset)
    except OSError:
        return False
    at = 0
    while at + 12 <= len(data):   # Elf64_Nhdr: namesz, descsz, type; name, desc 4-aligned
        namesz, descsz, kind = struct.unpack_from("<III", data, at)
        name_end = at + 12 + (namesz + 3) // 4 * 4
        desc = data[name_end:name_end + descsz]
        if kind == _NT_GNU_BUILD_ID and data[at + 12:at + 12 + namesz] == b"GNU\0":
            return desc.hex() == expected
        at = name_end + (descsz + 3) // 4 * 4
    return False


def mapped_file(pid: int, start: int, end: int) -> tuple[int, int] | None:
    """(device, inode) of the file ``pid`` maps at exactly ``start-end`` now (device -1:
    unknown, when only /proc/PID/maps could say); None when nothing is mapped at exactly
    that range (it was unmapped, or another mapping replaced part of it).  Raises
    ProcessLookupError when ``pid`` is gone."""
    try:
        return _file_id(os.stat(f"/proc/{pid}/map_files/{start:x}-{end:x}"))
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            raise ProcessLookupError(pid) from None
        return None
    except PermissionError:
        pass   # map_files needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE: ask maps instead
    try:
        maps = procfs.read_maps(pid)
    except procfs.ProcessNotFound:
        raise ProcessLookupError(pid) from None
    # the device in maps is the superblock's, not always stat's: not compared
    return next(((-1, m.inode) for m in maps if (m.start, m.end) == (start, end)), None)


def same_file(probed: tuple[int, int], mapped: tuple[int, int] | None) -> bool:
    """Whether ``mapped`` (from ``mapped_file``) is the file ``probed``."""
    return mapped is not None and mapped[1] == probed[1] and mapped[0] in (-1, probed[0])


class Capture:
    """The compiled capture programs, their probes and maps."""

    def __init__(self, limits: MapLimits = MapLimits(),
                 files: FileLimits = FileLimits()) -> None:
        self.limits = limits
        self.file_limits = files
        try:
            from bcc import BPF  # Debian's python3-bpfcc; slow to import, so only here
        except ImportError as exc:
            raise CaptureUnavailable("bcc is not installed (apt install python3-bpfcc)") from exc
        self.bpf: Any = None
        self._files: dict[tuple[int, int], ProbedFile] = {}
        self._targets: dict[int, Attachment] = {}
        self.wait_hooks = ""   # attached with the first probes (add), not before
        with _stderr_captured() as said:
            try:
                self.bpf = BPF(src_file=str(BPF_DIR / "capture.bpf.c").encode(),
                               cflags=[f"-I{BPF_DIR}", "-Wno-unused-function",
                                       *limits.cflags()])
                # Every program now: a load failure (privileges, verifier) is one clear
                # failure here rather than one per process later, and verifying one
                # (up to a second) never passes while a file's first probes are in place.
                programs = [name for handlers in _HANDLERS.values() for name, _ in handlers]
                for name in (*programs, "on_calibrate"):
                    self.bpf.load_func(name.encode(), BPF.KPROBE)
                for name in ("on_raw_enter", "on_raw_exit"):
                    self.bpf.load_func(name.encode(), BPF.RAW_TRACEPOINT)
                self._lib = __import__("bcc").lib
                self.tables = {name: self.bpf.get_table(name.encode(), keytype=key,
                                                        leaftype=value)
                               for name, (key, value) in _TABLES.items()}
            except Exception as exc:  # bcc raises bare Exceptions
                failure: Exception | None = exc
            else:
                failure = None
        if failure is not None:
            self.close()
            # bcc writes the reason on stderr (from C); say it in one line instead.
            reason = next((line for line in said if "error" in line.lower()
                           or "not permitted" in line.lower()), str(failure))
            if "not permitted" in reason or "super-user" in reason:
                reason += _NEEDS_CAPS
            raise CaptureUnavailable(f"the BPF programs did not load: {reason}") from failure
        _release_compiler_memory()

    # -- probes ---------------------------------------------------------------------
    def set_wait_hooks(self, on: bool) -> bool:
        """Learn when an event loop waits for I/O (a step is over) and wakes (its next
        steps are due), from raw syscall tracepoints.  (The tracepoints of the wait
        calls alone would spare other processes, but cost the traced loop more.)  They
        run for every system call of the host, so they are removed while no probe is.
        Both or neither are attached; removing them never fails.  Returns whether they
        were attached before."""
        before = bool(self.wait_hooks)
        if on and not self.wait_hooks:
            try:
                with _bcc("attach", "the syscall hooks (raw tracepoints) were not attached"):
                    self.bpf.attach_raw_tracepoint(tp=b"sys_enter", fn_name=b"on_raw_enter")
                    self.bpf.attach_raw_tracepoint(tp=b"sys_exit", fn_name=b"on_raw_exit")
            except CaptureUnavailable:
                self._detach_wait_hooks()
                raise
            self.wait_hooks = "raw syscall tracepoints"
        elif not on and self.wait_hooks:
            self._detach_wait_hooks()
        return before

    def _detach_wait_hooks(self) -> None:
        for tp in (b"sys_enter", b"sys_exit"):
            fd = self.bpf.raw_tracepoint_fds.pop(tp, None) if self.bpf is not None else None
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.wait_hooks = ""

    def _sync_wait_hooks(self) -> None:
        """The syscall hooks on while any file's probes are (not while all are paused)."""
        self.set_wait_hooks(any(f.perf_fds for f in self._files.values()))

    @contextmanager
    def empty_uprobe(self, path: str, offset: int, returns: bool = False) -> Iterator[None]:
        """A uprobe whose program does nothing, at ``offset`` of the file at ``path``,
        for as long as the ``with`` block runs (``returns``: and a uretprobe with it)."""
        kinds = (_ENTRY, _RETURN) if returns else (_ENTRY,)
        fds = []
        try:
            for kind in kinds:
                with _bcc("attach", "the calibration probe was not placed"):
                    fn = self.bpf.load_func(b"on_calibrate", self.bpf.KPROBE)
                    fd = self._lib.bpf_attach_uprobe(
                        fn.fd, kind, f"aiobpf_{os.getpid()}_cal_{offset:x}_{kind}".encode(),
                        path.encode(), offset, -1)
                if fd < 0:
                    raise CaptureUnavailable(f"could not attach a uprobe to {path}", "attach")
                fds.append(fd)
            yield
        finally:
            for fd in fds:
                self._lib.bpf_close_perf_event_fd(fd)

    def _place(self, probed: ProbedFile, name: str) -> list[int]:
        """Perf-event uprobes (and uretprobes) at the sites of the held file (all of
        them, or none)."""
        fds: list[int] = []
        try:
            for site in probed.sites.values():
                for handler, kind in _HANDLERS[site.function]:
                    fds.append(self._attach(probed, name, site, handler, kind))
        except BaseException:
            for placed in fds:
                self._lib.bpf_close_perf_event_fd(placed)
            raise
        return fds

    def _attach(self, probed: ProbedFile, name: str, site: ProbeSite, handler: str,
                kind: int) -> int:
        what = "uretprobe" if kind == _RETURN else "uprobe"
        with _bcc("attach", f"no {what} at {site.function} in {name}"):
            fn = self.bpf.load_func(handler.encode(), self.bpf.KPROBE)
            ev_name = (f"aiobpf_{os.getpid()}_{site.file_offset:x}"
                       + ("_r" if kind == _RETURN else "")).encode()
            fd = self._lib.bpf_attach_uprobe(fn.fd, kind, ev_name, probed.path.encode(),
                                             site.file_offset, -1)
        if fd < 0:
            err = ct.get_errno()
            raise CaptureUnavailable(
                f"could not attach a {what} to {site.function} in {name} "
                f"(+{site.file_offset:#x}): {os.strerror(err) if err else 'failed'}",
                "attach")
        return fd

    def _open_verified(self, pid: int, holder: LoadedImage, ranges: tuple[tuple[int, int], ...]
                       ) -> tuple[tuple[int, int], int]:
        """Open the file ``pid`` maps at ``ranges`` and check that it is the file parsed
        as ``holder``: the same (device, inode) as the process maps now and as the
        parsed image, the same build-id read through the new descriptor.  Returns the
        file's identity and the descriptor (the caller owns it)."""
        first = min(self._maps_of(pid, ranges), key=lambda m: m.offset)
        name = Path(holder.path).name
        try:   # the same checks as every file a target names (files.py)
            fd, _ = procfs.open_mapped_file(pid, first)
        except (files.UnsafeFile, OSError) as exc:
            raise CaptureUnavailable(f"{name}: could not be opened: {exc}", "attach") from None
        try:
            st = os.fstat(fd)
            file = _file_id(st)
            if not stat.S_ISREG(st.st_mode):
                raise CaptureUnavailable(f"{name}: not a regular file", "attach")
            try:
                parsed = _file_id(os.fstat(holder.image.stream.fileno()))
            except (OSError, ValueError, AttributeError):
                parsed = None
            try:
                mapped = [mapped_file(pid, lo, hi) for lo, hi in ranges]
            except ProcessLookupError:
                raise ProcessLookupError(pid) from None
            if parsed != file or not all(same_file(file, m) for m in mapped):
                raise CaptureUnavailable(f"{name}: the process no longer maps the file "
                                         "that was read", "probe_file_changed")
            if not _build_id_matches(fd, holder.image):
                raise CaptureUnavailable(f"{name}: its build-id changed since it was read",
                                         "probe_file_changed")
        except BaseException:
            os.close(fd)
            raise
        return file, fd

    @staticmethod
    def _maps_of(pid: int, ranges: tuple[tuple[int, int], ...]) -> list[procfs.Mapping]:
        wanted = set(ranges)
        found = [m for m in procfs.read_maps(pid) if (m.start, m.end) in wanted]
        if not found:
            raise CaptureUnavailable("the process no longer maps the file that was read",
                                     "probe_file_changed")
        return found

    def add(self, target: Target, debug: ElfImage | None = None, trace: bool = False,
            found: tuple[dict[str, ProbeSite], list[str]] | None = None) -> Attachment:
        """Trace ``target``: place the probes of its _asyncio file (once per file) and
        hand its layout to the programs.  ``found``: the probe sites and notes of
        ``find_step_sites`` when the caller already looked for them (off its loop).
        On failure nothing of it stays attached."""
        self.remove(target.pid)   # a process traced again: its old attachment goes
        holder = target.asyncio or target.core
        sites, notes = found if found is not None else find_step_sites(
            holder.image, debug, target.layout["type.call"], task_init=counts_creations(target))
        ranges = tuple((m.start, m.end) for m in target.maps if m.path == holder.path)
        attachment = Attachment(target.pid, sites, notes, ranges=ranges)
        if not sites:
            return attachment
        file, fd = self._open_verified(target.pid, holder, ranges)
        attachment.file = file
        probed = self._files.get(file)
        if probed is None:
            owner = os.fstat(fd).st_uid
            refused = self.file_limits.refuses(owner, [f.owner for f in self._files.values()])
            if refused:
                os.close(fd)
                raise CaptureUnavailable(f"{Path(holder.path).name}: no probes: {refused}",
                                         "too_many_files")
            probed = self._files[file] = ProbedFile(fd, sites, owner)
        else:
            os.close(fd)   # already held (verified when it was first probed)
        self._targets[target.pid] = attachment
        try:
            if not probed.perf_fds and probed.since == 0:   # new (not merely paused)
                probed.perf_fds = self._place(probed, Path(holder.path).name)
                probed.since = time.monotonic_ns()
            config = target_config(target, trace)
            config.epoch_ns = probed.since
            with _bcc("attach", "the process's settings were not stored"):
                self.tables["targets"][ct.c_uint32(target.pid)] = TargetValue(config,
                                                                              TargetStats())
            self._sync_wait_hooks()   # not while the file is paused
        except BaseException:
            self.remove(target.pid)
            raise
        return attachment

    def remove(self, pid: int) -> None:
        """Stop tracing ``pid``; its file's probes (and the held file) go when no traced
        process uses it.  Never fails."""
        attachment = self._targets.pop(pid, None)
        with contextlib.suppress(Exception):   # bcc: KeyError, or bare Exceptions
            del self.tables["targets"][ct.c_uint32(pid)]
        self._forget(pid)
        if attachment is None or attachment.file is None:
            return
        if any(other.file == attachment.file for other in self._targets.values()):
            return
        probed = self._files.pop(attachment.file, None)
        if probed is not None:
            self._release(probed)
        with contextlib.suppress(CaptureUnavailable):
            self._sync_wait_hooks()

    def _release(self, probed: ProbedFile) -> None:
        for fd in probed.perf_fds:
            self._lib.bpf_close_perf_event_fd(fd)
        probed.perf_fds = []
        with contextlib.suppress(OSError):
            os.close(probed.fd)

    def still_maps(self, pid: int) -> bool:
        """Whether ``pid`` still maps the probed file at every range it was traced with
        (False: it mapped something else over it; True when not probed).  Raises
        ProcessLookupError when ``pid`` is gone."""
        attachment = self._targets.get(pid)
        if attachment is None or attachment.file is None:
            return True
        file = attachment.file
        return all(same_file(file, mapped_file(pid, lo, hi)) for lo, hi in attachment.ranges)

    def users(self, file: tuple[int, int]) -> list[int]:
        """The traced processes that map ``file``."""
        return [pid for pid, a in self._targets.items() if a.file == file]

    def _forget(self, pid: int) -> None:
        """Delete the records and thread states of ``pid`` (no longer traced, or gone)."""
        records = [TaskKey(k.pid, 0, k.task) for k, _ in self._entries("records") if k.pid == pid]
        threads = [ct.c_uint32(getattr(k, "value", k))   # int from a batch, c_uint32 if not
                   for k, v in self._entries("threads") if v.pid == pid]
        for name, keys in (("records", records), ("threads", threads)):
            for key in keys:
                with contextlib.suppress(KeyError):
                    del self.tables[name][key]

    def prune(self) -> tuple[int, int]:
        """Delete what no reader will use again, so that the maps hold only what is
        traced now: the records of a process taken before its probes were last placed
        (``records(since_ns=...)`` never returns them: a task that finished while the
        probes were off would keep its record for good), and the states of threads
        that have exited.  Returns how many (records, thread states) were deleted."""
        def valid_since(pid: int) -> int | None:
            attachment = self._targets.get(pid)
            if attachment is None or attachment.file is None:
                return None
            return self.attached_since(attachment.file)

        records = []
        for k, v in self._entries("records"):
            since = valid_since(k.pid)
            if since is None or v.taken_ns < since:
                records.append(TaskKey(k.pid, 0, k.task))
        threads = []
        for k, v in self._entries("threads"):
            tid = getattr(k, "value", k)   # int from a batch, c_uint32 if not
            if v.pid not in self._targets or not os.path.exists(f"/proc/{v.pid}/task/{tid}"):
                threads.append(ct.c_uint32(tid))
        for name, keys in (("records", records), ("threads", threads)):
            for key in keys:
                with contextlib.suppress(KeyError):
                    del self.tables[name][key]
        return len(records), len(threads)

    # -- windows: probes off and on again, per file -----------------------------------
    def probe_count(self) -> int:
        """Probes in place now (one per probe site and file; two at Task.__init__)."""
        return sum(len(f.perf_fds) for f in self._files.values())

    def is_attached(self, file: tuple[int, int]) -> bool:
        probed = self._files.get(file)
        return probed is not None and bool(probed.perf_fds)

    def attached_since(self, file: tuple[int, int]) -> int | None:
        """CLOCK_MONOTONIC ns since which the file's probes have been in place."""
        return self._files[file].since if self.is_attached(file) else None

    def pause(self, file: tuple[int, int]) -> None:
        """Remove the file's probes; its processes stay configured (and counted).  Each
        removal takes ~0.1 s (counted as attached time): Task.__init__'s probes go
        first, so that the step probes see steps for as long as that time lasts."""
        probed = self._files.get(file)
        if probed is not None:
            for fd in reversed(probed.perf_fds):   # placed step probes first (_place)
                self._lib.bpf_close_perf_event_fd(fd)
            probed.perf_fds = []
        with contextlib.suppress(CaptureUnavailable):
            self._sync_wait_hooks()

    def resume(self, file: tuple[int, int]) -> None:
        """Place the file's probes again, through the held descriptor.  Steps that began
        before are not measured.  On failure the file stays paused (nothing attached)."""
        probed = self._files.get(file)
        if probed is None or probed.perf_fds:
            return
        now = time.monotonic_ns()
        for pid in self.users(file):
            self._update_config(pid, epoch_ns=now)
        probed.perf_fds = self._place(probed, f"file {file[1]}")
        probed.since = now
        try:
            self._sync_wait_hooks()
        except CaptureUnavailable:
            self.pause(file)
            raise

    # -- maps --------------------------------------------------------------------------
    def on_steps(self, handler: Callable[[TaskRecord], None]) -> None:
        """Call ``handler`` with each step-end record of traced processes whose
        settings ask for events (``add(..., trace=True)``); see ``poll``.  The record
        is a view of the ring buffer, valid during the call only."""
        def deliver(_ctx: object, data: int, size: int) -> None:
            if size >= ct.sizeof(TaskRecord):
                handler(TaskRecord.from_address(data))

        self._open_ring(deliver)

    def on_step_bytes(self, handler: Callable[[bytes], None]) -> None:
        """Like ``on_steps``, with a copy of each record's bytes (``TaskRecord
        .from_buffer_copy``): the cheapest way to empty the ring, decoding later."""
        size = ct.sizeof(TaskRecord)

        def deliver(_ctx: object, data: int, got: int) -> None:
            if got >= size:
                handler(ct.string_at(data, size))

        self._open_ring(deliver)

    def _open_ring(self, deliver: Callable[[object, int, int], None]) -> None:
        self._deliver = deliver  # keep the callback alive as long as the ring buffer
        self.bpf[b"events"].open_ring_buffer(deliver)

    def set_trace(self, pid: int, on: bool) -> None:
        """Start or stop step events for ``pid`` (records and counters go on)."""
        self._update_config(pid, trace=int(on))

    def _update_config(self, pid: int, **settings: int) -> None:
        key = ct.c_uint32(pid)
        try:
            value = self.tables["targets"][key]
        except KeyError:
            return
        for name, setting in settings.items():
            setattr(value.cfg, name, setting)
        with _bcc("attach", f"the settings of process {pid} were not stored"):
            self.tables["targets"][key] = value

    def poll(self, timeout_ms: int = 100) -> None:
        """Wait ``timeout_ms`` (the programs never wake the reader: a wakeup per event
        would cost the traced thread more than the event), then deliver every event in
        the ring."""
        if timeout_ms > 0:
            time.sleep(timeout_ms / 1000)
        self.bpf.ring_buffer_consume()

    def records(self, pid: int, since_ns: int = 0) -> dict[int, TaskRecord]:
        """The latest record of every task of ``pid`` that stepped since tracing began
        (and, with ``since_ns``, whose record was taken after that CLOCK_MONOTONIC time)."""
        out = {}
        for key, value in self._entries("records"):
            if key.pid == pid and value.taken_ns >= since_ns:
                record = TaskRecord()
                ct.memmove(ct.byref(record), ct.byref(value), ct.sizeof(TaskRecord))
                out[key.task] = record
        return out

    def _entries(self, name: str) -> Iterator[tuple]:
        """Every (key, value) of a hash map, BATCH_ENTRIES per system call
        (BPF_MAP_LOOKUP_BATCH, Linux 5.6+) instead of two system calls per entry.  The
        pairs yielded are overwritten by the next batch: copy what is kept."""
        table = self.tables[name]
        key_type, value_type = _TABLES[name]
        keys, values = (key_type * BATCH_ENTRIES)(), (value_type * BATCH_ENTRIES)()
        cursor, count = ct.c_uint32(0), ct.c_uint32(0)
        first = True
        while True:
            count.value = BATCH_ENTRIES
            failed = self._lib.bpf_lookup_batch(
                table.map_fd, None if first else ct.byref(cursor), ct.byref(cursor),
                ct.byref(keys), ct.byref(values), ct.byref(count))
            err = ct.get_errno() if failed else errno.ENOENT
            if err != errno.ENOENT:
                if first and err in (errno.EINVAL, errno.ENOTSUP, errno.ENOSYS):
                    yield from table.items()   # a kernel without batch lookups
                    return
                raise OSError(err, f"reading the {name} map: {os.strerror(err)}")
            for i in range(count.value):
                yield keys[i], values[i]
            if failed:
                return   # ENOENT: that was the last batch
            first = False

    def stats(self, pid: int) -> TargetStats | None:
        """The programs' counters and histograms for ``pid`` (None when not traced)."""
        try:
            value = self.tables["targets"][ct.c_uint32(pid)]
        except KeyError:
            return None
        stats = TargetStats()
        ct.memmove(ct.byref(stats), ct.byref(value.stats), ct.sizeof(TargetStats))
        return stats

    def close(self) -> None:
        """Detach every probe, close the held files and release the programs; safe
        after any failure, and more than once."""
        for probed in self._files.values():
            self._release(probed)
        self._files.clear()
        self._targets.clear()
        self._detach_wait_hooks()
        bpf, self.bpf = self.bpf, None
        if bpf is not None:
            with contextlib.suppress(Exception):   # bcc: bare Exceptions
                bpf.cleanup()
