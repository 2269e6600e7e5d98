"""Errors a user can act on: each carries its exit code and what to do about it
(``errors.translate`` turns what the collector raises into them).

The CLI prints ``aiobpf: <message>`` and, indented below it, the hint; never a
traceback.  Exit codes (documented in the README):

    0   success
    1   error (the process exited while being read, an await cycle, an unexpected fault)
    2   usage error (bad arguments)
    3   not a Python aiobpf supports (not Python, too old/new, free-threaded)
    4   nothing to show (asyncio not imported, no pending tasks)
    77  permission denied (root or a capability is needed, ptrace restrictions)
"""

from __future__ import annotations

import os
from pathlib import Path

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNSUPPORTED = 3
EXIT_NOTHING = 4
EXIT_PERMISSION = 77

CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


class AiobpfError(Exception):
    exit_code = EXIT_ERROR

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"aiobpf: {self.message}"
        return f"{text}\n  {self.hint}" if self.hint else text


class ProcessNotFoundError(AiobpfError):
    def __init__(self, pid: int) -> None:
        super().__init__(f"no process with PID {pid}",
                         "check the PID (ps -e, pgrep -f SCRIPT); it may have exited")


class ProcessExitedError(AiobpfError):
    def __init__(self, pid: int) -> None:
        super().__init__(f"process {pid} exited while aiobpf was reading it")


class NotPythonError(AiobpfError):
    exit_code = EXIT_UNSUPPORTED

    def __init__(self, message: str) -> None:
        super().__init__(message, "aiobpf reads CPython 3.11-3.15 processes; is PID the "
                                  "Python process, not a wrapper (a shell, a reloader)?")


class UnsupportedPythonError(AiobpfError):
    exit_code = EXIT_UNSUPPORTED

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is not supported",
                         "aiobpf reads CPython 3.11 to 3.15 with the GIL, on x86-64")


class NoAsyncioError(AiobpfError):
    exit_code = EXIT_NOTHING

    def __init__(self, message: str) -> None:
        super().__init__(message,
                         "nothing to show until the program imports asyncio and creates tasks")


class NoTasksError(AiobpfError):
    exit_code = EXIT_NOTHING

    def __init__(self, pid: int, version: str) -> None:
        super().__init__(f"process {pid} (Python {version}) has no pending asyncio tasks",
                         "its event loop is idle, not started yet, or already finished")


class AwaitCycleError(AiobpfError):
    """The await graph has cycles: a tree cannot be drawn (``ps`` still works)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("await-graph contains cycles - cannot print a tree!")
        self.lines = lines

    def render(self) -> str:
        return "\n".join([f"ERROR: {self.message}", "", *self.lines])


class PermissionDeniedError(AiobpfError):
    exit_code = EXIT_PERMISSION

    def __init__(self, pid: int, what: str = "read its memory") -> None:
        super().__init__(f"not allowed to {what} (PID {pid})", permission_hint(pid))


class PrivilegeError(AiobpfError):
    """The command needs privileges aiobpf lacks (root, or capabilities)."""

    exit_code = EXIT_PERMISSION


def may_load_bpf() -> bool:
    """Has aiobpf the capabilities that loading BPF programs and attaching uprobes need?"""
    return has_capability(CAP_SYS_ADMIN) or (has_capability(CAP_BPF)
                                              and has_capability(CAP_PERFMON))


def has_capability(bit: int) -> bool:
    """Whether this process holds capability ``bit`` in its effective set."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return False


def ptrace_scope() -> int | None:
    try:
        return int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text())
    except (OSError, ValueError):
        return None


def permission_hint(pid: int) -> str:
    """Say why the kernel refused to let aiobpf read ``pid``, and what to do."""
    scope = ptrace_scope()
    if scope == 3:
        return ("kernel.yama.ptrace_scope is 3: no process may read another's memory, "
                "not even root, until the next reboot")
    if os.geteuid() != 0 and not has_capability(CAP_SYS_PTRACE):
        reason = "aiobpf needs CAP_SYS_PTRACE to read another process's memory"
        if scope in (1, 2):
            reason += f" (kernel.yama.ptrace_scope is {scope})"
        else:
            try:
                owner = Path(f"/proc/{pid}").stat().st_uid
            except OSError:
                owner = None
            if owner is not None and owner != os.geteuid():
                reason += f" (the process belongs to uid {owner})"
            else:
                reason += " (the process is not dumpable, or runs setuid)"
        return reason + ": run it as root, e.g. sudo aiobpf ..."
    return ("the kernel refused the read although aiobpf has CAP_SYS_PTRACE: a security "
            "module (SELinux, AppArmor, Yama) denies it; see aiobpf doctor")
