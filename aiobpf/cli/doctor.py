"""aiobpf doctor: what this host offers aiobpf, and how to fix what it lacks."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from aiobpf.cli.common import daemon_socket
from aiobpf.errors import (
    CAP_BPF,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    CAP_SYS_PTRACE,
    EXIT_ERROR,
    EXIT_OK,
    ptrace_scope,
)

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Check:
    name: str
    status: str          # ok | warn | FAIL
    detail: str          # what was found
    fix: str = ""        # what to do about it
    needed_for: str = "bpf"  # memory (ps/pstree), bpf (capture) or daemon


def _caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_kernel() -> Check:
    arch = os.uname().machine
    detail = f"Linux {os.uname().release} on {arch}"
    if arch != "x86_64":
        return Check("kernel", FAIL, detail, "aiobpf reads x86-64 processes only", "memory")
    return Check("kernel", OK, detail, needed_for="memory")


def check_memory_access() -> Check:
    caps = _caps()
    if os.geteuid() == 0 or caps >> CAP_SYS_PTRACE & 1:
        who = "root" if os.geteuid() == 0 else "CAP_SYS_PTRACE"
        return Check("memory reads", OK, f"running as {who}", needed_for="memory")
    return Check("memory reads", FAIL, f"uid {os.geteuid()} without CAP_SYS_PTRACE",
                 "run as root (sudo aiobpf ...) or grant CAP_SYS_PTRACE; without it only "
                 "processes of the same user that are dumpable can be read", "memory")


def check_ptrace_scope() -> Check:
    scope = ptrace_scope()
    if scope is None:
        return Check("ptrace scope", OK, "Yama is not enabled", needed_for="memory")
    if scope == 3:
        return Check("ptrace scope", FAIL, "kernel.yama.ptrace_scope = 3",
                     "no process may read another's memory until reboot; boot with a lower "
                     "kernel.yama.ptrace_scope", "memory")
    if scope and os.geteuid() != 0:
        return Check("ptrace scope", WARN, f"kernel.yama.ptrace_scope = {scope}",
                     "reading other processes needs CAP_SYS_PTRACE (run as root)", "memory")
    return Check("ptrace scope", OK, f"kernel.yama.ptrace_scope = {scope}", needed_for="memory")


def check_lockdown() -> Check:
    try:
        text = Path("/sys/kernel/security/lockdown").read_text().strip()
    except OSError:
        return Check("lockdown", OK, "no lockdown LSM")
    mode = text[text.find("[") + 1:text.find("]")] if "[" in text else text
    if mode == "confidentiality":
        return Check("lockdown", WARN, "lockdown=confidentiality",
                     "BPF programs may not read kernel memory; BPF capture may be refused")
    return Check("lockdown", OK, f"lockdown={mode}")


def check_bpf_privileges() -> Check:
    caps = _caps()
    if os.geteuid() == 0 or caps >> CAP_SYS_ADMIN & 1:
        return Check("BPF privileges", OK, "root or CAP_SYS_ADMIN")
    if caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1:
        return Check("BPF privileges", WARN, "CAP_BPF and CAP_PERFMON without CAP_SYS_ADMIN",
                     "kernels since 6.16 (and stable series with the backport of \"perf: "
                     "Revert to requiring CAP_SYS_ADMIN for uprobes\") refuse uprobes "
                     "without CAP_SYS_ADMIN: grant it if BPF capture stays off")
    return Check("BPF privileges", WARN, "neither root nor CAP_BPF + CAP_PERFMON",
                 "BPF capture will be off; run as root or grant CAP_BPF and CAP_PERFMON")


def check_bpf_syscall() -> Check:
    """Create (and close) a tiny BPF array map: the bpf() system call works."""
    import ctypes

    class MapAttr(ctypes.Structure):
        _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                    ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                    ("pad", ctypes.c_uint8 * 112)]

    libc = ctypes.CDLL(None, use_errno=True)
    attr = MapAttr(2, 4, 8, 1)  # BPF_MAP_TYPE_ARRAY
    fd = libc.syscall(321, 0, ctypes.byref(attr), ctypes.sizeof(attr))  # bpf(BPF_MAP_CREATE)
    if fd < 0:
        err = ctypes.get_errno()
        return Check("bpf() system call", WARN, os.strerror(err),
                     "BPF capture will be off: run as root, or check "
                     "kernel.unprivileged_bpf_disabled and the kernel's CONFIG_BPF_SYSCALL")
    os.close(fd)
    return Check("bpf() system call", OK, "a BPF map could be created")


def check_uprobes() -> Check:
    if Path("/sys/bus/event_source/devices/uprobe/type").exists():
        major, minor = (int(n) for n in re.findall(r"\d+", os.uname().release)[:2])
        kind = ("BPF links (Linux 6.6+), perf events where refused" if (major, minor) >= (6, 6)
                else "perf events (uprobe-multi links need Linux 6.6)")
        return Check("uprobes", OK, f"placed as {kind}; released with their descriptors")
    return Check("uprobes", WARN, "no uprobe PMU in /sys/bus/event_source/devices",
                 "BPF capture needs a kernel with CONFIG_UPROBE_EVENTS")


def check_btf() -> Check:
    if Path("/sys/kernel/btf/vmlinux").exists():
        return Check("BTF", OK, "/sys/kernel/btf/vmlinux")
    return Check("BTF", WARN, "no /sys/kernel/btf/vmlinux", "not needed by bcc; informational")


def check_bcc() -> Check:
    try:
        import bcc  # slow to import: only here
    except ImportError:
        in_venv = sys.prefix != sys.base_prefix
        hint = "apt install python3-bpfcc (bcc is not on PyPI; the PyPI package 'bcc' is unrelated)"
        if in_venv:
            hint += "; this venv must be created with --system-site-packages to see it"
        return Check("bcc", WARN, "python module bcc not found", hint)
    version = getattr(bcc, "__version__", "?")
    return Check("bcc", OK, f"bcc {version} from {Path(bcc.__file__).parent}")


def check_kernel_headers() -> Check:
    build = Path(f"/lib/modules/{os.uname().release}/build")
    if (build / "Makefile").exists():
        return Check("kernel headers", OK, f"{build} -> {build.resolve()}")
    return Check("kernel headers", WARN, f"{build} is missing",
                 "bcc compiles against the running kernel's headers: run scripts/provision.sh, "
                 "which links Debian's linux-headers-amd64 for kernels without a headers package")


def check_compiled_loops() -> Check:
    from aiobpf.collector import speedups

    if speedups.COMPILED:
        return Check("compiled loops", OK, "the collector's hot loops are compiled "
                     "(aiobpf/collector/_speedups.c)", needed_for="memory")
    return Check("compiled loops", WARN, f"the collector's hot loops run in Python: "
                 f"{speedups.NOT_COMPILED}",
                 "reads of big processes take about twice as long; make provision builds "
                 "them (it needs gcc and python3-dev)", "memory")


def check_daemon() -> Check:
    from aiobpf.daemon.dumps import answers

    path = daemon_socket()
    if path.exists() and answers(path):
        return Check("daemon", OK, f"an aiobpf daemon answers on {path}: ps and pstree ask "
                                   "it first", needed_for="daemon")
    return Check("daemon", OK, f"no aiobpf daemon on {path}: ps and pstree read processes "
                               "themselves (optional: aiobpf daemon --help)",
                 needed_for="daemon")


CHECKS: tuple[Callable[[], Check], ...] = (
    check_kernel, check_memory_access, check_ptrace_scope, check_lockdown,
    check_bpf_privileges, check_bpf_syscall, check_uprobes, check_btf, check_bcc,
    check_kernel_headers, check_compiled_loops, check_daemon,
)


class DoctorCommand:
    """Check this host for what aiobpf needs, one line per check, with the fix for each gap.

    ps and pstree need memory reads (root or CAP_SYS_PTRACE, a permissive ptrace
    scope); BPF capture also needs the bpf() system call, uprobes, bcc and kernel
    headers.  Exit status 0 when memory reads work (BPF gaps are warnings), 1 when
    they do not."""

    name = "doctor"
    help = "check this host for what aiobpf needs"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the checks as JSON")

    def run(self, args: argparse.Namespace) -> int:
        checks = [check() for check in CHECKS]
        if args.json:
            import json

            print(json.dumps([asdict(c) for c in checks], indent=2))
        else:
            for c in checks:
                line = f"{c.status:<4} {c.name:<18} {c.detail}"
                print(line + (f"\n     {'':<18} fix: {c.fix}" if c.fix and c.status != OK else ""))
        failed = any(c.status == FAIL and c.needed_for == "memory" for c in checks)
        return EXIT_ERROR if failed else EXIT_OK
