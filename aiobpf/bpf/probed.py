"""Files with probes: opened once, checked to be the very file the process maps
and aiobpf parsed (device, inode, build-id), and held open.  Every attach, the
first and each window's, goes through that descriptor (``/proc/self/fd/N``),
never again through a path a traced process could point at another file; and
how many files hold probes at once is bounded (``FileLimits``).
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from aiobpf.bpf.program import CaptureUnavailable
from aiobpf.collector import files, procfs
from aiobpf.collector.elf import ElfImage
from aiobpf.collector.probes import ProbeSite
from aiobpf.collector.target import LoadedImage


@dataclass(frozen=True)
class FileLimits:
    """Distinct files with probes at once (None: no limit).  Removing a file's probes
    takes the kernel time at every window's end and when aiobpf stops (uprobes.py: ~0.1 s
    per probe, one after another, as perf events; ~0.08 s for a file's links, and files'
    links overlap): a user who maps many copies of _asyncio must not make that
    unbounded, nor take the probes (and the kernel memory they hold) from everyone else.
    Files owned by a user other than root count against that owner's own share too."""

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


# The daemon's: 32 files of four probes take 0.6 s to detach at stop as links, 17 s as
# perf events (bench/probe_detach.py --files 32); 2 per user, 0.1 s (1 s).
DAEMON_FILES = FileLimits(files=32, per_owner=2)


@dataclass
class ProbedFile:
    """A file with probe sites, held open from the moment it was verified."""

    fd: int                                   # O_RDONLY, verified: what every attach uses
    sites: dict[str, ProbeSite]
    owner: int = 0                            # the file's uid (FileLimits)
    probe_fds: list[int] = field(default_factory=list)  # [] while paused
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


def open_verified(pid: int, holder: LoadedImage, ranges: tuple[tuple[int, int], ...]
                  ) -> tuple[tuple[int, int], int]:
    """Open the file ``pid`` maps at ``ranges`` and check that it is the file parsed
    as ``holder``: the same (device, inode) as the process maps now and as the
    parsed image, the same build-id read through the new descriptor.  Returns the
    file's identity and the descriptor (the caller owns it)."""
    first = min(_maps_of(pid, ranges), key=lambda m: m.offset)
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


def _maps_of(pid: int, ranges: tuple[tuple[int, int], ...]) -> list[procfs.Mapping]:
    """The mappings of ``pid`` at exactly ``ranges`` (at least one)."""
    wanted = set(ranges)
    found = [m for m in procfs.read_maps(pid) if (m.start, m.end) in wanted]
    if not found:
        raise CaptureUnavailable("the process no longer maps the file that was read",
                                 "probe_file_changed")
    return found
