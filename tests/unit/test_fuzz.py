"""Decoders fed random and adversarial memory: bounded time, no crash.

A fake process memory (a bytes buffer at a fixed base address) stands in for
the target; every decoder of objects, frames, task lists and thread lists must
either return or raise one of the errors the collector handles -- never hang,
never raise anything else, never allocate without bound.
"""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiobpf.collector.awaiters import AwaiterIndex
from aiobpf.collector.frames import Frames
from aiobpf.collector.interpreter import interpreters, thread_states
from aiobpf.collector.layouts import Layout
from aiobpf.collector.layouts.constants import CONSTANTS
from aiobpf.collector.layouts.tables import TABLES
from aiobpf.collector.memory import ReadFault
from aiobpf.collector.objects import DecodeError, Objects
from aiobpf.collector.tasks import (
    TaskListCorrupt,
    TaskRefs,
    linked_tasks,
    read_task,
    task_span,
    walk_llist,
)

BASE = 0x7F00_0000_0000
SIZE = 1 << 16
PAGE = 4096
HANDLED = (DecodeError, ReadFault, TaskListCorrupt)   # not LayoutError: a misspelled key


class FakeMemory:
    """The interface of RemoteMemory over a bytes buffer mapped at BASE."""

    def __init__(self, data: bytes) -> None:
        self.data = data.ljust(SIZE, b"\0")[:SIZE]

    def read(self, addr: int, size: int) -> bytes:
        if size < 0 or addr < BASE or addr + size > BASE + SIZE:
            raise ReadFault(addr, size)
        return self.data[addr - BASE:addr - BASE + size]

    read_fresh = read

    def page(self, base: int) -> bytes:
        return self.read(base, PAGE)

    def read_many(self, addrs: list[int], size: int) -> list[bytes | None]:
        out: list[bytes | None] = []
        for addr in addrs:
            try:
                out.append(self.read(addr, size))
            except ReadFault:
                out.append(None)
        return out

    def read_packed(self, addrs: list[int], size: int) -> tuple[bytearray, list[int]]:
        blobs = self.read_many(addrs, size)
        return (bytearray(b"".join(blob or bytes(size) for blob in blobs)),
                [-1 if blob is None else i * size for i, blob in enumerate(blobs)])

    def u64(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]

    ptr = u64

    def i64(self, addr: int) -> int:
        return struct.unpack("<q", self.read(addr, 8))[0]

    def clear(self) -> None:
        pass

    def prefetch(self, addrs) -> None:
        pass


def layouts() -> list[Layout]:
    return [Layout(key, dict(table["values"]), {}, CONSTANTS[key[:2]])
            for key, table in TABLES.items()]


# Buffers full of pointers back into themselves make the nastiest inputs: loops,
# self-references, huge lengths next to plausible pointers.
pointer_words = st.lists(
    st.one_of(st.integers(0, SIZE - 8).map(lambda off: BASE + off),
              st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1])),
    min_size=16, max_size=SIZE // 8)


def buffers():
    return st.one_of(st.binary(min_size=64, max_size=SIZE),
                     pointer_words.map(lambda ws: b"".join(struct.pack("<Q", w) for w in ws)))


def _exercise(layout: Layout, data: bytes, addr: int) -> None:
    mem = FakeMemory(data)
    objs = Objects(mem, layout)  # type: ignore[arg-type]
    frames = Frames(objs)
    calls = [
        lambda: objs.str_(addr), lambda: objs.int_(addr), lambda: objs.tuple_items(addr),
        lambda: objs.list_items(addr), lambda: objs.dict_items(addr), lambda: objs.set_items(addr),
        lambda: objs.attr(addr, "data"), lambda: objs.code(addr), lambda: objs.kind(addr),
        lambda: frames.chain(addr), lambda: frames.thread_stack(addr),
        lambda: interpreters(objs, addr), lambda: thread_states(objs, addr),
        lambda: read_task(objs, addr, task_span(objs)),
        lambda: AwaiterIndex(objs, []).inferred(read_task(objs, addr, task_span(objs))),
    ]
    if layout.has("llist.next"):
        calls.append(lambda: list(walk_llist(objs, addr)))
    for call in calls:
        with contextlib.suppress(*HANDLED):
            call()


@pytest.mark.parametrize("layout", layouts(), ids=lambda la: ".".join(map(str, la.version)))
@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=buffers(), offset=st.integers(0, SIZE - 8))
def test_decoders_survive_random_memory(layout: Layout, data: bytes, offset: int) -> None:
    _exercise(layout, data, BASE + (offset & ~7))


def _words(*words: int) -> bytes:
    return b"".join(struct.pack("<Q", w) for w in words)


def test_task_list_looping_away_from_its_head_is_caught() -> None:
    layout = next(la for la in layouts() if la.has("llist.next"))
    nxt = layout["llist.next"]
    data = bytearray(SIZE)
    # head at 0 -> node at 0x100 -> 0x200 -> 0x300 -> back to 0x100 (never the head)
    for node, following in ((0, 0x100), (0x100, 0x200), (0x200, 0x300), (0x300, 0x100)):
        struct.pack_into("<Q", data, node + nxt, BASE + following)
    objs = Objects(FakeMemory(bytes(data)), layout)  # type: ignore[arg-type]
    with pytest.raises(TaskListCorrupt):
        for _ in walk_llist(objs, BASE):
            pass


def test_a_task_list_torn_mid_walk_is_retried_then_kept_in_part() -> None:
    """A node freed while the list is walked leads to a small pointer: the walk faults
    (the snapshot takes it again); the last attempt keeps the nodes before the tear."""
    layout = next(la for la in layouts() if la.has("interp.asyncio_tasks_head"))
    nxt, head_at = layout["llist.next"], layout["interp.asyncio_tasks_head"]
    data = bytearray(SIZE)
    # head at 0 -> node at 0x100 -> 0x200 -> 0x10 (freed, its memory reused)
    for node, following in ((0, BASE + 0x100), (0x100, BASE + 0x200), (0x200, 0x10)):
        struct.pack_into("<Q", data, node + nxt, following)
    objs = Objects(FakeMemory(bytes(data)), layout)  # type: ignore[arg-type]
    interp = BASE - head_at
    with pytest.raises(ReadFault):
        linked_tasks(objs, [], [interp], [])
    errors: list[str] = []
    found = linked_tasks(objs, [], [interp], errors, partial=True)
    assert found == TaskRefs([BASE + 0x100 - layout["task.node"],
                              BASE + 0x200 - layout["task.node"]], [0, 0])
    assert len(errors) == 1 and "changed while it was read" in errors[0], errors
    assert "after the first 2 are left out" in errors[0]


def test_a_task_list_of_70000_is_walked_whole() -> None:
    """3.14's tool gives up beyond 65,536 tasks; aiobpf has no cap."""
    layout = next(la for la in layouts() if la.has("llist.next"))
    nxt = layout["llist.next"]
    n, stride = 70_000, 16

    class Ring(FakeMemory):
        """Nodes ``stride`` bytes apart from BASE, each pointing to the next."""

        def read(self, addr: int, size: int) -> bytes:
            index = (addr - BASE - nxt) // stride
            if size == 8 and (addr - BASE - nxt) % stride == 0 and 0 <= index <= n:
                following = 0 if index == n else index + 1
                return struct.pack("<Q", BASE + following * stride)
            raise ReadFault(addr, size)

        def page(self, base: int) -> bytes:
            words = bytearray(PAGE)
            for at in range(0, PAGE, 8):
                with contextlib.suppress(ReadFault):
                    words[at:at + 8] = self.read(base + at, 8)
            if not any(words):
                raise ReadFault(base, PAGE)
            return bytes(words)

    objs = Objects(Ring(b""), layout)  # type: ignore[arg-type]
    assert sum(1 for _ in walk_llist(objs, BASE)) == n
