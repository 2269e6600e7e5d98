"""The user side of capture.bpf.c: one ``Capture`` compiles it (program.py), places
its probes, keeps them for as long as a traced process needs them, and reads its
maps (abi.py's types, maps.py's batches) and its ring buffer.

One ``Capture`` serves any number of processes and Python versions: probes are
attached once per file (a uprobe belongs to an inode, not a process), and a
process is traced when its per-process configuration (config.py) is in the
``targets`` map.  Probes are BPF links (or perf events on kernels before 6.6:
uprobes.py): the kernel removes them when aiobpf's file descriptors close, so
nothing outlives aiobpf, even after SIGKILL.

A probed file is opened once, verified and held (probed.py): every attach goes
through that descriptor.  bcc raises bare ``Exception``s: every call into it is
wrapped, and a failure leaves nothing attached.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiobpf.bpf.abi import TargetSettings, TargetStats, TargetValue, TaskKey, TaskRecord
from aiobpf.bpf.config import counts_creations, target_config
from aiobpf.bpf.maps import entries
from aiobpf.bpf.probed import FileLimits, ProbedFile, mapped_file, open_verified, same_file
from aiobpf.bpf.program import (
    CALIBRATION,
    HANDLERS,
    WAIT_HOOKS,
    CaptureUnavailable,
    MapLimits,
    bcc_errors,
    load,
)
from aiobpf.bpf.uprobes import ENTRY, RETURN
from aiobpf.collector.elf import ElfImage
from aiobpf.collector.probes import TASK_INIT, ProbeSite, find_step_sites
from aiobpf.collector.target import Target


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


_DEFAULT_MAPS, _ANY_FILES = MapLimits(), FileLimits()


class Capture:
    """The compiled capture programs, their probes and maps."""

    def __init__(self, limits: MapLimits = _DEFAULT_MAPS,
                 files: FileLimits = _ANY_FILES, uprobes: str | None = None) -> None:
        self.limits = limits
        self.file_limits = files
        program = load(limits, uprobes)
        self.bpf: Any = program.bpf
        self._lib = program.lib
        self.uprobes = program.uprobes
        self.tables = program.tables
        self._files: dict[tuple[int, int], ProbedFile] = {}
        self._targets: dict[int, Attachment] = {}
        self._slots: dict[int, int] = {}   # pid -> its entry in the settings map
        self._free_slots = list(range(limits.targets - 1, -1, -1))
        self.wait_hooks = ""   # attached with the first probes (add), not before

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
                with bcc_errors("attach", "the syscall hooks (raw tracepoints) were not attached"):
                    for tp, program in WAIT_HOOKS.items():
                        self.bpf.attach_raw_tracepoint(tp=tp.encode(), fn_name=program.encode())
            except CaptureUnavailable:
                self._detach_wait_hooks()
                raise
            self.wait_hooks = "raw syscall tracepoints"
        elif not on and self.wait_hooks:
            self._detach_wait_hooks()
        return before

    def _detach_wait_hooks(self) -> None:
        fds = self.bpf.raw_tracepoint_fds if self.bpf is not None else {}
        for tp in WAIT_HOOKS:
            fd = fds.pop(tp.encode(), None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.wait_hooks = ""

    def _sync_wait_hooks(self) -> None:
        """The syscall hooks on while any file's probes are (not while all are paused)."""
        self.set_wait_hooks(any(f.probe_fds for f in self._files.values()))

    @contextmanager
    def empty_uprobe(self, path: str, offset: int, returns: bool = False) -> Iterator[None]:
        """A uprobe whose program does nothing, at ``offset`` of the file at ``path``,
        for as long as the ``with`` block runs (``returns``: and a uretprobe with it)."""
        kinds = (ENTRY, RETURN) if returns else (ENTRY,)
        fn = self.bpf.funcs[CALIBRATION.encode()]   # loaded with the others
        fds: list[int] = []
        try:
            for kind in kinds:
                try:
                    fds.append(self.uprobes.place(
                        fn.fd, path, offset, kind,
                        f"aiobpf_{os.getpid()}_cal_{offset:x}_{kind}"))
                except OSError as exc:
                    raise CaptureUnavailable(f"could not attach a uprobe to {path}: "
                                             f"{exc.strerror}", "attach") from None
            yield
        finally:
            self.uprobes.remove(fds)

    def _place(self, probed: ProbedFile, name: str) -> list[int]:
        """Uprobes (and uretprobes) at the sites of the held file (all of
        them, or none)."""
        fds: list[int] = []
        try:
            for site in probed.sites.values():
                for handler, kind in HANDLERS[site.function]:
                    fds.append(self._attach(probed, name, site, handler, kind))
        except BaseException:
            self.uprobes.remove(fds)
            raise
        return fds

    def _attach(self, probed: ProbedFile, name: str, site: ProbeSite, handler: str,
                kind: int) -> int:
        what = "uretprobe" if kind == RETURN else "uprobe"
        fn = self.bpf.funcs[handler.encode()]   # loaded with the others (program.load)
        ev_name = f"aiobpf_{os.getpid()}_{site.file_offset:x}" + ("_r" if kind == RETURN else "")
        try:
            return self.uprobes.place(fn.fd, probed.path, site.file_offset, kind, ev_name)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if exc.errno == errno.EINVAL:   # the kernel logs "ref_ctr_offset mismatch"
                why += (" (another tracer's probe at that place may have a reference "
                        "counter, as bcc's Python attach_uprobe sets by mistake)")
            raise CaptureUnavailable(
                f"could not attach a {what} to {site.function} in {name} "
                f"(+{site.file_offset:#x}): {why}", "attach") from None

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
        file, fd = open_verified(target.pid, holder, ranges)
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
            if not probed.probe_fds and probed.since == 0:   # new (not merely paused)
                probed.probe_fds = self._place(probed, Path(holder.path).name)
                probed.since = time.monotonic_ns()
            if not self._free_slots:
                raise CaptureUnavailable(f"{self.limits.targets} processes are traced "
                                         "already", "attach")
            slot = self._slots[target.pid] = self._free_slots.pop()
            with bcc_errors("attach", "the process's settings were not stored"):
                self.tables["settings"][ct.c_int(slot)] = TargetSettings(probed.since,
                                                                         int(trace))
                self.tables["targets"][ct.c_uint32(target.pid)] = TargetValue(
                    target_config(target, slot), TargetStats())
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
        slot = self._slots.pop(pid, None)
        if slot is not None:
            self._free_slots.append(slot)
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
        self.uprobes.remove(probed.probe_fds)
        probed.probe_fds = []
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
        records = [TaskKey(k.pid, 0, k.task) for k, _ in self.entries("records") if k.pid == pid]
        threads = [ct.c_uint32(getattr(k, "value", k))   # int from a batch, c_uint32 if not
                   for k, v in self.entries("threads") if v.pid == pid]
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
        for k, v in self.entries("records"):
            since = valid_since(k.pid)
            if since is None or v.taken_ns < since:
                records.append(TaskKey(k.pid, 0, k.task))
        threads = []
        for k, v in self.entries("threads"):
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
        return sum(len(f.probe_fds) for f in self._files.values())

    def is_attached(self, file: tuple[int, int]) -> bool:
        probed = self._files.get(file)
        return probed is not None and bool(probed.probe_fds)

    def attached_since(self, file: tuple[int, int]) -> int | None:
        """CLOCK_MONOTONIC ns since which the file's probes have been in place."""
        return self._files[file].since if self.is_attached(file) else None

    def pause(self, file: tuple[int, int]) -> None:
        """Remove the file's probes; its processes stay configured (and counted).  The
        removal takes time (counted as attached time; uprobes.py): as perf events,
        Task.__init__'s probes go first, so that the step probes see steps for as long
        as that time lasts."""
        probed = self._files.get(file)
        if probed is not None:
            self.uprobes.remove(probed.probe_fds[::-1])   # placed step probes first (_place)
            probed.probe_fds = []
        with contextlib.suppress(CaptureUnavailable):
            self._sync_wait_hooks()

    def resume(self, file: tuple[int, int]) -> None:
        """Place the file's probes again, through the held descriptor.  Steps that began
        before are not measured.  On failure the file stays paused (nothing attached)."""
        probed = self._files.get(file)
        if probed is None or probed.probe_fds:
            return
        now = time.monotonic_ns()
        for pid in self.users(file):
            self._update_settings(pid, epoch_ns=now)
        probed.probe_fds = self._place(probed, f"file {file[1]}")
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
        self._update_settings(pid, trace=int(on))

    def _update_settings(self, pid: int, **changes: int) -> None:
        """Change ``pid``'s settings (only user space writes them: the counters, which
        the programs update in place, are never written back)."""
        slot = self._slots.get(pid)
        if slot is None:
            return
        key = ct.c_int(slot)
        value = self.tables["settings"][key]
        for name, setting in changes.items():
            setattr(value, name, setting)
        with bcc_errors("attach", f"the settings of process {pid} were not stored"):
            self.tables["settings"][key] = value

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
        for key, value in self.entries("records"):
            if key.pid == pid and value.taken_ns >= since_ns:
                record = TaskRecord()
                ct.memmove(ct.byref(record), ct.byref(value), ct.sizeof(TaskRecord))
                out[key.task] = record
        return out

    def entries(self, name: str) -> Iterator[tuple]:
        """Every (key, value) of the map ``name`` (maps.entries: the pairs are
        overwritten by the next batch)."""
        return entries(self._lib, self.tables[name], name)

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
        self.uprobes.remove([fd for f in self._files.values() for fd in f.probe_fds])
        for probed in self._files.values():   # all at once (links overlap), then the files
            probed.probe_fds = []
            self._release(probed)
        self._files.clear()
        self._targets.clear()
        self._detach_wait_hooks()
        bpf, self.bpf = self.bpf, None
        if bpf is not None:
            with contextlib.suppress(Exception):   # bcc: bare Exceptions
                bpf.cleanup()
