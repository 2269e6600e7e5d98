"""Run a command as a process with a chosen PID: ``python -m tests.adversarial.at_pid PID
COMMAND...`` (root only).

clone3 with ``set_tid`` (Linux 5.5+) creates the child with exactly that PID, or fails
with EEXIST when the PID is taken: only the child this starts is affected (unlike
writing /proc/sys/kernel/ns_last_pid, which moves the PID of whatever process of the
host forks next).  The child runs COMMAND; this process waits for it and exits with its
status, so that killing this process's group kills both.  Exit status 75: the PID
could not be had.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

SYS_CLONE3 = 435   # x86-64 and every architecture with the generic syscall table
PID_UNAVAILABLE = 75


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


def spawn_at(pid: int, argv: list[str]) -> int:
    """Start ``argv`` as PID ``pid``; the child's PID (never returns in the child)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    wanted = (ctypes.c_int32 * 1)(pid)
    args = _CloneArgs(exit_signal=signal.SIGCHLD, set_tid=ctypes.addressof(wanted),
                      set_tid_size=1)
    # This process runs no other thread: the child may go on in Python until exec.
    child = libc.syscall(ctypes.c_long(SYS_CLONE3), ctypes.byref(args),
                         ctypes.c_size_t(ctypes.sizeof(args)))
    if child < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"clone3 with PID {pid}: {os.strerror(err)}")
    if child == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    return child


def main() -> int:
    pid, argv = int(sys.argv[1]), sys.argv[2:]
    try:
        child = spawn_at(pid, argv)
    except OSError as exc:
        print(f"at_pid: {exc}", file=sys.stderr)
        return PID_UNAVAILABLE
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
