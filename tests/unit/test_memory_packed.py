"""RemoteMemory.read_packed on this process's own memory: objects close together are
read as one range, and a range that faults costs only the objects in it."""

from __future__ import annotations

import ctypes
import mmap
import os

import pytest

from aiobpf.collector import memory
from aiobpf.collector.memory import RUN, RemoteMemory

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)


def _pages(n: int) -> tuple[mmap.mmap, int]:
    area = mmap.mmap(-1, n * PAGE)
    area[:] = bytes(i % 251 for i in range(n * PAGE))
    return area, ctypes.addressof(ctypes.c_char.from_buffer(area))


def test_close_objects_are_read_with_one_call() -> None:
    area, base = _pages(4)
    mem = RemoteMemory(os.getpid())
    addrs = [base + 40 * i for i in range(100)]   # 4 KB apart at most: runs of RUN bytes
    buf, offsets = mem.read_packed(addrs, 32)
    assert min(offsets) >= 0
    for i, addr in enumerate(addrs):
        assert buf[offsets[i]:offsets[i] + 32] == area[addr - base:addr - base + 32]
    assert mem.syscalls == 1
    assert len(buf) <= 4000 + 32 + RUN   # the runs hold the objects and the gaps between
    del buf


def test_an_unmapped_object_costs_only_itself() -> None:
    area, base = _pages(3)
    # The middle page unreadable: a run across it faults.
    assert _libc.mprotect(ctypes.c_void_p(base + PAGE), PAGE, 0) == 0
    try:
        mem = RemoteMemory(os.getpid())
        addrs = [base + PAGE - 100, base + PAGE + 50, base + 2 * PAGE + 8, 0, 1 << 62,
                 base + 16]
        buf, offsets = mem.read_packed(addrs, 24)
        assert [i for i, at in enumerate(offsets) if at < 0] == [1, 3, 4]
        for i in (0, 2, 5):
            at = addrs[i] - base
            assert buf[offsets[i]:offsets[i] + 24] == area[at:at + 24]
        assert mem.read_many(addrs, 24)[1] is None
    finally:
        _libc.mprotect(ctypes.c_void_p(base + PAGE), PAGE, 3)


def test_nothing_to_read() -> None:
    mem = RemoteMemory(os.getpid())
    assert mem.read_packed([], 8) == (bytearray(), [])
    assert mem.read_packed([0, -5], 8)[1] == [-1, -1]


def test_without_process_vm_readv_the_same_bytes_come_from_proc_mem(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels without process_vm_readv (ENOSYS): /proc/PID/mem, range by range."""
    area, base = _pages(3)
    unmapped = mmap.mmap(-1, PAGE)
    hole = ctypes.addressof(ctypes.c_char.from_buffer(unmapped))
    unmapped.close()   # its address is no longer mapped
    addrs = [base + 16, base + PAGE + 50, hole + 8, base + 2 * PAGE + 8, base + 200]
    fast = RemoteMemory(os.getpid())
    want = fast.read_many(addrs, 24)
    assert want[2] is None and want[0] == area[16:40]
    monkeypatch.setattr(memory, "_process_vm_readv", None)
    slow = RemoteMemory(os.getpid())
    assert slow.read_many(addrs, 24) == want
    slow.close()


@pytest.mark.parametrize("via", ["process_vm_readv", "/proc/PID/mem"])
def test_a_page_is_read_with_the_mapped_pages_after_it(via: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``page`` (the task-list walk's reads) reads ``PAGES_AHEAD`` pages at once, keeps
    those that are mapped and stops at the first that is not."""
    area, base = _pages(memory.PAGES_AHEAD + 2)
    # A hole after the first PAGES_AHEAD - 1 pages: a read-ahead stops before it.
    hole = base + (memory.PAGES_AHEAD - 1) * PAGE
    assert _libc.munmap(ctypes.c_void_p(hole), PAGE) == 0
    if via != "process_vm_readv":
        monkeypatch.setattr(memory, "_process_vm_readv", None)
    mem = RemoteMemory(os.getpid())
    for k in range(memory.PAGES_AHEAD - 1):
        assert mem.page(base + k * PAGE) == area[k * PAGE:(k + 1) * PAGE]
    assert mem.syscalls == 1          # the first read brought the pages after it
    with pytest.raises(memory.ReadFault):
        mem.page(hole)
    last = memory.PAGES_AHEAD + 1
    assert mem.page(base + last * PAGE) == area[last * PAGE:]   # the mapping's end
    mem.close()
