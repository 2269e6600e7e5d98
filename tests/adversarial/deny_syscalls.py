"""Run a command under a seccomp filter that makes some system calls fail with EPERM, as a
container runtime's seccomp profile does: the kernel itself refuses, nothing is mocked.

Usage: deny_syscalls.py [--perf-event-open] [--bpf-cmd N ...] -- COMMAND [ARG...]
  --perf-event-open  every perf_event_open(2) fails (no uprobe can be attached)
  --bpf-cmd N        bpf(2) with command N fails (e.g. 17: BPF_RAW_TRACEPOINT_OPEN)
The filter applies to COMMAND (exec'd in place: same PID) and everything it starts.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import struct
import sys

AUDIT_ARCH_X86_64 = 0xC000003E
NR_BPF, NR_PERF_EVENT_OPEN = 321, 298            # x86-64
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
# offsets in struct seccomp_data: nr, arch, instruction_pointer, args[6]
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def build_filter(perf_event_open: bool, bpf_cmds: list[int]) -> bytes:
    """A classic BPF program: EPERM for the denied calls, everything else allowed."""
    deny = _insn(BPF_RET_K, SECCOMP_RET_ERRNO | errno.EPERM)
    allow = _insn(BPF_RET_K, SECCOMP_RET_ALLOW)
    body: list[bytes] = []
    if perf_event_open:
        body += [_insn(BPF_LD_W_ABS, OFF_NR), _insn(BPF_JEQ_K, NR_PERF_EVENT_OPEN, 0, 1), deny]
    for cmd in bpf_cmds:
        body += [_insn(BPF_LD_W_ABS, OFF_NR), _insn(BPF_JEQ_K, NR_BPF, 0, 3),
                 _insn(BPF_LD_W_ABS, OFF_ARG0), _insn(BPF_JEQ_K, cmd, 0, 1), deny]
    # another architecture's calls (x32, i386 entry points) are refused outright
    head = [_insn(BPF_LD_W_ABS, OFF_ARCH), _insn(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0), deny]
    return b"".join(head + body + [allow])


def install(program: bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(program)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(program) // 8, ctypes.addressof(buffer))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(
            PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        sys.exit(f"deny_syscalls: seccomp filter not installed: {os.strerror(err)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perf-event-open", action="store_true")
    parser.add_argument("--bpf-cmd", type=int, action="append", default=[])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    install(build_filter(args.perf_event_open, args.bpf_cmd))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
