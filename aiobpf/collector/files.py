"""Opening the files a target names: the one way aiobpf opens a file on a process's behalf.

Everything here assumes the process is hostile.  A file is first reached with
``O_PATH`` (which opens nothing: no FIFO can block, no device sees an open),
its path resolved without leaving the tree it belongs to (``openat2`` with
``RESOLVE_IN_ROOT`` inside the target's root, ``RESOLVE_BENEATH`` inside a host
directory; magic links refused), then checked to be a regular file of a
bounded, non-zero size, and only then reopened for reading, non-blocking.
Callers get a plain file descriptor; they never see a path that could be
resolved again to something else.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

GiB = 1 << 30
MAX_FILE_BYTES = 2 * GiB          # an ELF or debug file larger than this is not read

_SYS_OPENAT2 = 437                # x86-64 and every architecture of the generic table
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_CLOEXEC


class UnsafeFile(Exception):
    """A file a target names that aiobpf will not read (outside its tree, not a regular
    file, empty or too large, or gone)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2) (Linux 5.6+); raises OSError."""
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how),
                       ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            raise UnsafeFile("the kernel lacks openat2 (Linux 5.6+): files of traced "
                             "processes cannot be opened safely")
        raise OSError(err, os.strerror(err), path)
    return fd


def _relative(name: str) -> str:
    """``name`` as a path relative to the tree's top (openat2 takes "/x" as relative to the
    root under RESOLVE_IN_ROOT, but refuses it under RESOLVE_BENEATH)."""
    relative = name.lstrip("/")
    if not relative or "\0" in relative:
        raise UnsafeFile(f"{name!r} is not a file name")
    return relative


def reopen_checked(path_fd: int, what: str, max_bytes: int = MAX_FILE_BYTES,
                   inode: int | None = None) -> int:
    """A read-only, non-blocking descriptor of the regular file that ``path_fd`` (an
    ``O_PATH`` descriptor, always closed here) stands for, once its type and size are
    checked (and its inode, when given)."""
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{what} is not a regular file")
        if inode is not None and st.st_ino != inode:
            raise UnsafeFile(f"{what} is not the file the process maps (another inode)")
        if not 0 < st.st_size <= max_bytes:
            raise UnsafeFile(f"{what} has {st.st_size} bytes (accepted: 1 to {max_bytes})")
        try:
            fd = os.open(f"/proc/self/fd/{path_fd}", _READ_FLAGS)
        except OSError as exc:
            raise UnsafeFile(f"{what}: {exc.strerror}") from exc
    finally:
        os.close(path_fd)
    return fd


@dataclass(frozen=True)
class Tree:
    """A directory tree files are looked up in and never leave.

    ``confined`` trees are a process's root (``/proc/PID/root``): absolute links in
    them resolve against that root, as the process sees them.  Other trees are host
    directories (e.g. /usr/lib/debug): no link may lead out of them.  ``sub`` is the
    directory inside the tree where names are looked up.
    """

    top: Path
    sub: str = ""
    confined: bool = False

    @classmethod
    def of_process(cls, pid: int, sub: str = "") -> Tree:
        return cls(Path(f"/proc/{pid}/root"), sub.strip("/"), confined=True)

    def __str__(self) -> str:
        return f"{self.top}/{self.sub}" if self.sub else str(self.top)

    def open(self, name: str, max_bytes: int = MAX_FILE_BYTES) -> int:
        """A checked read-only descriptor (see ``reopen_checked``) of ``name`` in this tree."""
        relative = _relative(f"{self.sub}/{name}" if self.sub else name)
        resolve = RESOLVE_NO_MAGICLINKS | (RESOLVE_IN_ROOT if self.confined else RESOLVE_BENEATH)
        what = f"{self}/{name}"
        try:
            top = os.open(self.top, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise UnsafeFile(f"{self.top}: {exc.strerror}") from exc
        try:
            path_fd = _openat2(top, relative, _PATH_FLAGS, resolve)
        except OSError as exc:
            raise UnsafeFile(f"{what}: {exc.strerror}") from exc
        finally:
            os.close(top)
        return reopen_checked(path_fd, what, max_bytes)


def open_in_root(pid: int, path: str, max_bytes: int = MAX_FILE_BYTES) -> int:
    """The file ``path`` as process ``pid`` sees it, resolved inside its root."""
    return Tree.of_process(pid).open(path, max_bytes)


def open_host(path: str, max_bytes: int = MAX_FILE_BYTES) -> int:
    """A host file by its absolute ``path``, following no link at all."""
    top = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        path_fd = _openat2(top, _relative(path), _PATH_FLAGS,
                           RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_BENEATH)
    except OSError as exc:
        raise UnsafeFile(f"{path}: {exc.strerror}") from exc
    finally:
        os.close(top)
    return reopen_checked(path_fd, path, max_bytes)


def open_map_file(entry: Path, inode: int, max_bytes: int = MAX_FILE_BYTES) -> int:
    """The mapped file behind a ``/proc/PID/map_files`` entry (a magic link naming the
    mapped inode itself; root only), checked to be that inode."""
    try:
        path_fd = os.open(entry, _PATH_FLAGS)
    except OSError as exc:
        raise UnsafeFile(f"{entry}: {exc.strerror}") from exc
    return reopen_checked(path_fd, str(entry), max_bytes, inode=inode)


def file_size(fd: int) -> int:
    return os.fstat(fd).st_size
