"""What /proc says about a process: mappings, root directory, threads, identity.

Files of a target are opened through ``/proc/PID/map_files`` (the mapped inode
itself) or ``/proc/PID/root`` so that a process in a container or chroot is read
from its own filesystem, always through ``files`` (no link out of the root, nothing
that blocks); paths are reported as the target sees them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from aiobpf.collector import files
from aiobpf.safe_text import from_bytes


class ProcessNotFound(Exception):
    """No process has this PID (or it exited)."""


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str  # as the target sees it; "" for anonymous mappings

    @property
    def is_file(self) -> bool:
        return self.inode != 0 and self.path.startswith("/")


def parse_maps(text: str) -> list[Mapping]:
    """Parse the text of /proc/PID/maps."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, _, hi = parts[0].partition("-")
        path = parts[5] if len(parts) == 6 else ""
        if path.endswith(" (deleted)"):
            path = path[: -len(" (deleted)")]
        out.append(Mapping(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16),
                           int(parts[4]), path))
    return out


def read_maps(pid: int) -> list[Mapping]:
    """The mappings of ``pid``; a path that is not UTF-8 (the target names its files)
    keeps its bytes as surrogates, as ``os.fsdecode`` does, so that it opens as is."""
    try:
        return parse_maps(os.fsdecode(Path(f"/proc/{pid}/maps").read_bytes()))
    except FileNotFoundError:
        raise ProcessNotFound(pid) from None
    except ProcessLookupError:
        raise ProcessNotFound(pid) from None


def host_path(pid: int, path: str) -> Path:
    """The target's file ``path`` seen from the host (for messages and for bcc: opening
    it goes through ``files``, which keeps the lookup inside the target's root)."""
    return Path(f"/proc/{pid}/root{path}")


def map_files_path(pid: int, mapping: Mapping) -> Path:
    """/proc/PID/map_files entry of a mapping: opens the very file that is mapped."""
    return Path(f"/proc/{pid}/map_files/{mapping.start:x}-{mapping.end:x}")


def mapped_paths(pid: int, mapping: Mapping) -> list[Path]:
    """Host paths that may lead to the file behind ``mapping``: the mapped inode itself
    (needs CAP_SYS_ADMIN); the path as /proc/PID/maps gives it, which the kernel writes
    relative to the reader's root (right for a chroot); and that path inside the
    process's root directory (right for a container with its own mount namespace)."""
    return [map_files_path(pid, mapping), Path(mapping.path), host_path(pid, mapping.path)]


def open_mapped_file(pid: int, mapping: Mapping) -> tuple[int, Path]:
    """A checked, read-only descriptor of the very file (same inode) behind ``mapping``,
    and the host path it was reached by (in the order of ``mapped_paths``); raises
    ``files.UnsafeFile`` when none leads to it."""
    entry, on_host, in_root = mapped_paths(pid, mapping)
    openers = ((entry, lambda: files.open_map_file(entry, mapping.inode)),
               (on_host, lambda: files.open_host(mapping.path)),
               (in_root, lambda: files.open_in_root(pid, mapping.path)))
    reasons = []
    for path, opener in openers:
        try:
            fd = opener()
        except files.UnsafeFile as exc:
            reasons.append(str(exc))
            continue
        if os.fstat(fd).st_ino == mapping.inode:
            return fd, path
        os.close(fd)
        reasons.append(f"{path} is another file")
    raise files.UnsafeFile(f"{mapping.path} of process {pid} cannot be opened safely: "
                           + "; ".join(reasons))


def open_mapped(pid: int, mapping: Mapping) -> Path:
    """A host path to the very file (same inode) behind ``mapping``, checked as
    ``open_mapped_file`` does; raises ``files.UnsafeFile``."""
    fd, path = open_mapped_file(pid, mapping)
    os.close(fd)
    return path


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    name: str
    exe: str       # as the target sees it
    cmdline: list[str]
    uid: int
    in_container: bool


def process_info(pid: int) -> ProcessInfo:
    """Name, executable, command line and owner of ``pid``.  Its files are read as
    bytes and decoded with U+FFFD for what is not UTF-8 (a process names itself: its
    name and command line may hold any bytes); ``exe`` keeps undecodable bytes as
    surrogates, as ``os`` does (``safe_text`` makes it printable)."""
    base = Path(f"/proc/{pid}")
    try:
        status_text = from_bytes((base / "status").read_bytes())
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessNotFound(pid) from None
    # Lines end at "\n" only: str.splitlines would also split a name at \x1c-\x1e or \x85.
    status = dict(line.split(":", 1) for line in status_text.split("\n") if ":" in line)
    if status.get("State", "").strip().startswith("Z"):
        raise ProcessNotFound(pid)  # a zombie has no memory left to read
    try:
        exe = os.readlink(base / "exe")
    except OSError:
        exe = ""
    try:
        cmdline = from_bytes((base / "cmdline").read_bytes()).split("\0")[:-1]
    except OSError:
        cmdline = []
    uid = int(status.get("Uid", "0").split()[0])
    return ProcessInfo(pid, status.get("Name", "").strip(), exe, cmdline, uid,
                       _in_other_root(pid))


def _in_other_root(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/root/") != os.stat("/")
    except OSError:
        return False


def exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


# -- identity: what changes when a PID is given to another process, or a process execs --
AT_NULL, AT_RANDOM = 0, 25
_AUXV_ENTRY = 16        # (key, value), two 64-bit words on x86-64
_AUXV_MAX = 4096        # the kernel's vector is a few hundred bytes
_STAT_MAX = 4096
_STARTTIME = 19         # /proc/PID/stat field 22, counted from the state (field 3)


def _read_small(path: str, limit: int) -> bytes:
    """One read of a /proc file of the kernel's making (never larger than ``limit``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessNotFound(path) from None
    try:
        return os.read(fd, limit)
    except ProcessLookupError:
        raise ProcessNotFound(path) from None
    finally:
        os.close(fd)


def start_time(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot: a process that is given a PID
    used before starts later than the one that had it."""
    data = _read_small(f"/proc/{pid}/stat", _STAT_MAX)
    fields = data[data.rfind(b")") + 1:].split()   # the name may hold ")" and spaces
    try:
        return int(fields[_STARTTIME])
    except (IndexError, ValueError):
        raise ProcessNotFound(pid) from None   # an exiting process's partial file


def auxv_value(auxv: bytes, key: int) -> int | None:
    """The value of ``key`` in an auxiliary vector (/proc/PID/auxv), None if absent."""
    for offset in range(0, len(auxv) - _AUXV_ENTRY + 1, _AUXV_ENTRY):
        found = int.from_bytes(auxv[offset:offset + 8], "little")
        if found == key:
            return int.from_bytes(auxv[offset + 8:offset + _AUXV_ENTRY], "little")
        if found == AT_NULL:
            return None
    return None


def exec_generation(pid: int) -> bytes:
    """What tells one program image of ``pid`` from the next one: the 16 random bytes
    the kernel writes on the new stack at every exec (where AT_RANDOM points; glibc
    seeds its stack protector with them), with their address.  They change at every
    exec, of the same executable too, with or without address randomization (``setarch
    -R``).  The process may overwrite them (they are on its own stack), which can only
    confuse the tracing of that process itself.  Without them (a kernel thread, a
    32-bit process, the mm gone mid-exec): the auxiliary vector itself."""
    auxv = _read_small(f"/proc/{pid}/auxv", _AUXV_MAX)
    address = auxv_value(auxv, AT_RANDOM)
    if address is None:
        return auxv
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessNotFound(pid) from None
    try:
        random = os.pread(fd, 16, address)
    except OSError:
        return auxv
    finally:
        os.close(fd)
    return address.to_bytes(8, "little") + random if len(random) == 16 else auxv


# -- CPU time, to the nanosecond ----------------------------------------------------------
MAX_CPU_THREADS = 256   # threads read one by one; a process with more is read whole
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
_UTIME = 11             # /proc/PID/stat fields 14 and 15, counted from the state


@dataclass(frozen=True)
class ThreadTimes:
    """The CPU time of each thread of a process (``/proc/PID/task/TID/schedstat``: to
    the nanosecond, where ``/proc/PID/stat`` counts 10 ms ticks, which would make a
    window of half a second at a few percent of a CPU mostly rounding)."""

    ns: dict[int, int]

    def since(self, before: ThreadTimes) -> float:
        """CPU seconds the threads spent since ``before`` (a thread that exited in
        between is not counted; a new one counts from its start)."""
        total = 0
        for tid, ns in self.ns.items():
            was = before.ns.get(tid, 0)
            total += ns - was if ns >= was else ns   # (a TID given to a new thread)
        return total / 1e9


def thread_times(pid: int) -> ThreadTimes:
    """Every thread's CPU time; a process with over ``MAX_CPU_THREADS`` threads (or
    whose threads cannot be listed) is counted whole, in ticks, under TID 0."""
    try:
        with os.scandir(f"/proc/{pid}/task") as entries:
            tids = [int(e.name) for _, e in zip(range(MAX_CPU_THREADS + 1), entries,
                                                strict=False) if e.name.isdigit()]
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessNotFound(pid) from None
    if len(tids) > MAX_CPU_THREADS:
        return ThreadTimes({0: round(process_cpu_s(pid) * 1e9)})
    times = {}
    for tid in tids:
        try:
            times[tid] = int(_read_small(f"/proc/{pid}/task/{tid}/schedstat", 128).split()[0])
        except (ProcessNotFound, IndexError, ValueError):
            continue   # the thread exited meanwhile
    return ThreadTimes(times)


def process_cpu_s(pid: int) -> float:
    """The process's user + system time (all its threads, the exited ones too), in
    seconds, counted in clock ticks (/proc/PID/stat)."""
    data = _read_small(f"/proc/{pid}/stat", _STAT_MAX)
    fields = data[data.rfind(b")") + 1:].split()
    try:
        return (int(fields[_UTIME]) + int(fields[_UTIME + 1])) * _TICK_NS / 1e9
    except (IndexError, ValueError):
        raise ProcessNotFound(pid) from None
