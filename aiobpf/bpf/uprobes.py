"""How a uprobe is placed and removed: as a BPF link of the uprobe-multi kind where the
kernel has them (Linux 6.6+), else as a perf event.

The difference is the time a removal takes, which a capture window pays for (the
probes stay in place until it is over, and the budget counts it as attached time).
Closing a perf-event uprobe waits for RCU grace periods under a kernel-wide mutex,
one probe after another: ~0.12 s each here, 0.48 s for the four probes of a 3.12+
file.  A uprobe-multi link waits once, and links closed from threads of their own
wait together: the same four in 0.08 s (``bench/probe_detach.py`` compares both).

A program loaded for links cannot be attached as a perf event, nor the reverse: the
kind is chosen once, when the programs are loaded (``choose``).

Every probe has no reference counter (``ref_ctr_offset`` 0).  A non-zero one makes the
kernel increment a 16-bit counter in the traced process's memory (a USDT semaphore),
and the kernel refuses a second probe at the same place with another one.  bcc's
``bpf_attach_uprobe`` takes it as a seventh argument that bcc's own Python binding
(0.26) does not pass, so the C side reads whatever is on the stack: it is called here
through a prototype of its own, with 0.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import functools
import os
import platform
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ENTRY, RETURN = 0, 1   # enum bpf_probe_attach_type (perf events)
LINKS, PERF = "links", "perf"
_UPROBE_MULTI = 48     # enum bpf_attach_type: BPF_TRACE_UPROBE_MULTI
_MULTI_RETURN = 1      # BPF_F_UPROBE_MULTI_RETURN
_LINK_CREATE = 28      # enum bpf_cmd: BPF_LINK_CREATE
MAX_CLOSERS = 16       # threads that close links at once (a daemon's stop: 32 files x 4)
_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())   # bpf(2)

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


class _UprobeMultiLink(ct.Structure):
    """The BPF_LINK_CREATE part of ``union bpf_attr`` for uprobe-multi links, as the
    kernel's uapi lays it out (the kernel takes the rest of the union as zeros)."""

    _fields_ = [("prog_fd", ct.c_uint32), ("target_fd", ct.c_uint32),
                ("attach_type", ct.c_uint32), ("flags", ct.c_uint32),
                ("path", ct.c_uint64), ("offsets", ct.c_uint64),
                ("ref_ctr_offsets", ct.c_uint64), ("cookies", ct.c_uint64),
                ("cnt", ct.c_uint32), ("multi_flags", ct.c_uint32), ("pid", ct.c_uint32)]


_PERF_UPROBE = ct.CFUNCTYPE(ct.c_int, ct.c_int, ct.c_int, ct.c_char_p, ct.c_char_p,
                           ct.c_ulonglong, ct.c_int, ct.c_uint32, use_errno=True)


@functools.cache
def _perf_attach(lib: Any) -> Any:
    """bcc's ``bpf_attach_uprobe`` with its real prototype (``ref_ctr_offset`` last)."""
    return _PERF_UPROBE(("bpf_attach_uprobe", lib))


def _link(prog_fd: int, path: str, offset: int, kind: int) -> int:
    """A uprobe-multi link of one probe; returns its descriptor or raises OSError."""
    if _NR_BPF is None:
        raise OSError(errno.ENOSYS, f"bpf(2)'s number on {platform.machine()} is not known")
    name = ct.create_string_buffer(os.fsencode(path))
    offsets = (ct.c_uint64 * 1)(offset)
    attr = _UprobeMultiLink(prog_fd=prog_fd, attach_type=_UPROBE_MULTI,
                            path=ct.addressof(name), offsets=ct.addressof(offsets), cnt=1,
                            multi_flags=_MULTI_RETURN if kind == RETURN else 0)
    fd = _libc.syscall(_NR_BPF, _LINK_CREATE, ct.byref(attr), ct.sizeof(attr))
    if fd < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


@dataclass(frozen=True)
class Uprobes:
    """Uprobes of one kind (``LINKS`` or ``PERF``), through bcc's ``lib``."""

    kind: str
    lib: Any

    @property
    def load_type(self) -> int:
        """The expected attach type to load a uprobe program with (-1: none)."""
        return _UPROBE_MULTI if self.kind == LINKS else -1

    def place(self, prog_fd: int, path: str, offset: int, kind: int, name: str) -> int:
        """A probe running ``prog_fd`` at ``offset`` of the file at ``path`` (``kind``:
        ENTRY or RETURN; ``name``: the perf event's, unique).  Raises OSError."""
        if self.kind == LINKS:
            return _link(prog_fd, path, offset, kind)
        fd = _perf_attach(self.lib)(prog_fd, kind, name.encode(), os.fsencode(path), offset,
                                    -1, 0)
        if fd < 0:
            err = ct.get_errno()
            raise OSError(err, os.strerror(err) if err else "bcc could not attach it")
        return int(fd)

    def remove(self, fds: Sequence[int]) -> None:
        """Remove probes, in the order given (perf events) or all at once (links, from
        up to ``MAX_CLOSERS`` threads: their grace periods overlap).  Never fails."""
        if self.kind == PERF:
            for fd in fds:
                self.lib.bpf_close_perf_event_fd(fd)
            return
        shares = [fds[i::MAX_CLOSERS] for i in range(min(len(fds), MAX_CLOSERS))]
        closers = [threading.Thread(target=_close_all, args=(share,), name="aiobpf-detach")
                   for share in shares[1:]]
        for closer in closers:
            closer.start()
        _close_all(shares[0] if shares else [])
        for closer in closers:
            closer.join()


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        _close(fd)


def choose(bpf: Any, lib: Any, program: str, wanted: str | None = None) -> Uprobes:
    """The kind of uprobe this kernel takes, found by loading ``program`` (an empty
    uprobe program, left loaded for that kind) and asking for a link on "/" (which is
    no regular file: a kernel with uprobe-multi links refuses it with EBADF, one
    without them with EINVAL).  ``wanted``: PERF forces perf events."""
    from bcc import BPF
    if wanted != PERF and _NR_BPF is not None:
        try:
            fn = bpf.load_func(program.encode(), BPF.KPROBE, attach_type=_UPROBE_MULTI)
        except Exception:  # bcc: bare Exceptions (an old kernel refuses the attach type)
            fn = None
        if fn is not None:
            try:
                _close(_link(fn.fd, "/", 0, ENTRY))   # not expected to succeed
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return Uprobes(LINKS, lib)
            bpf.funcs.pop(program.encode(), None)   # loaded for links: not for perf
            _close(fn.fd)
    return Uprobes(PERF, lib)
