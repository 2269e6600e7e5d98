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
    try:
        return parse_maps(Path(f"/proc/{pid}/maps").read_text())
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
    base = Path(f"/proc/{pid}")
    try:
        status = dict(line.split(":", 1) for line in (base / "status").read_text().splitlines()
                      if ":" in line)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessNotFound(pid) from None
    if status.get("State", "").strip().startswith("Z"):
        raise ProcessNotFound(pid)  # a zombie has no memory left to read
    try:
        exe = os.readlink(base / "exe")
    except OSError:
        exe = ""
    try:
        cmdline = (base / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
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
