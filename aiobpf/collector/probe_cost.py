"""What BPF capture costs a traced process on this machine, measured rather than assumed.

Costs that do not show in the programs' own run time (which they add up themselves,
``prog_ns_sum``): the trap of each uprobe hit (the breakpoint exception, the
emulated instruction, the return to user space); on 3.12+, the two traps of each
task created (Task.__init__'s entry and return probes: a uretprobe's return trap
costs more than a uprobe's); and the toll the raw syscall tracepoints take on every
system call (the kernel's slow syscall path and two programs).  All are timed here
in aiobpf's own process, in a few tens of milliseconds:

- a three-byte function (``push %rbp; pop %rbp; ret``: a ``push``, which the kernel
  emulates) in a memfd mapped executable, called with and without a uprobe whose
  program does nothing, and with and without such a uprobe and uretprobe; and with
  a ``sub $0x28,%rsp`` first, an instruction the kernel must single-step out of line
  (a second trap): a probe site of either kind is found in distribution builds
  (``TaskStepMethWrapper``'s call function starts with a ``sub`` in Debian's 3.14,
  where a hit costs ~10x a ``push``'s here);
- ``getppid()``, with and without the syscall hooks attached.

Rounds alternate off and on, and the medians are compared, so that a busy machine
skews both sides alike.
"""

from __future__ import annotations

import ctypes as ct
import mmap
import os
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from aiobpf.bpf.capture import Capture

_PUSH_POP_RET = bytes([0x55, 0x5D, 0xC3])
_SUB_ADD_RET = bytes([0x48, 0x83, 0xEC, 0x28, 0x48, 0x83, 0xC4, 0x28, 0xC3])
_SYS_GETPPID = 110  # x86-64


@dataclass(frozen=True)
class ProbeCosts:
    """This machine's timings; what a step costs: aiobpf.daemon.budget.cost."""

    trap_s: float       # one uprobe hit on an emulated instruction, empty program
    syscall_s: float    # one system call while the syscall hooks are attached
    stepped_trap_s: float = 0.0   # ... on an instruction single-stepped out of line
    created_s: float = 0.0   # one call through an entry and a return probe (a task created)


def _per_call(call: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        call()
    return (time.perf_counter_ns() - start) / calls / 1e9


def _compare(call: Callable[[], object], on: Callable[[], object], off: Callable[[], object],
             calls: int, rounds: int) -> float:
    """Median extra time per call with ``on()`` in effect, in alternating rounds."""
    bare, probed = [], []
    for _ in range(rounds):
        bare.append(_per_call(call, calls))
        on()
        try:
            probed.append(_per_call(call, calls))
        finally:
            off()
    return max(statistics.median(probed) - statistics.median(bare), 0.0)


def _libc() -> ct.CDLL:
    libc = ct.CDLL("libc.so.6", use_errno=True)
    libc.mmap.restype = ct.c_void_p
    libc.mmap.argtypes = [ct.c_void_p, ct.c_size_t, ct.c_int, ct.c_int, ct.c_int, ct.c_long]
    libc.munmap.argtypes = [ct.c_void_p, ct.c_size_t]
    return libc


def trap_cost(capture: Capture, calls: int = 20000, rounds: int = 3,
              code: bytes = _PUSH_POP_RET, returns: bool = False) -> float:
    """Seconds one uprobe hit on ``code``'s first instruction (a ``push`` unless said)
    costs, with a program that does nothing (``returns``: one call through such a
    uprobe and a uretprobe)."""
    libc = _libc()
    fd = os.memfd_create("aiobpf-calibrate", os.MFD_CLOEXEC)
    try:
        os.write(fd, code.ljust(mmap.PAGESIZE, b"\xcc"))
        address = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC,
                            mmap.MAP_PRIVATE, fd, 0)
        if address in (None, ct.c_void_p(-1).value):
            raise OSError(ct.get_errno(), "mmap of the calibration code failed")
        try:
            function = ct.CFUNCTYPE(None)(address)
            with ExitStack() as probes:
                return _compare(function,
                                lambda: probes.enter_context(
                                    capture.empty_uprobe(f"/proc/self/fd/{fd}", 0, returns)),
                                probes.close, calls, rounds)
        finally:
            libc.munmap(address, mmap.PAGESIZE)
    finally:
        os.close(fd)


def syscall_cost(capture: Capture, calls: int = 20000, rounds: int = 3) -> float:
    """Seconds the syscall hooks add to one system call."""
    libc = _libc()
    before = capture.set_wait_hooks(False)
    try:
        return _compare(lambda: libc.syscall(_SYS_GETPPID),
                        lambda: capture.set_wait_hooks(True),
                        lambda: capture.set_wait_hooks(False), calls, rounds)
    finally:
        capture.set_wait_hooks(before)


def measure(capture: Capture) -> ProbeCosts:
    """The costs, on this machine now (about 0.25 s)."""
    return ProbeCosts(trap_s=trap_cost(capture), syscall_s=syscall_cost(capture),
                      stepped_trap_s=trap_cost(capture, code=_SUB_ADD_RET),
                      created_s=trap_cost(capture, returns=True))
