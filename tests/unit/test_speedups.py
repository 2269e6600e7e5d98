"""The compiled loops (``aiobpf/collector/_speedups.c``) against their Python reference
(``aiobpf.collector.speedups``), on generated input: hostile buffers, offsets past the
end, addresses that are no address, stack pointers anywhere.  Same results, same
changes to every chain, never a crash.

The C module must be built here (``make provision`` builds it): a test that cannot
load it fails."""

from __future__ import annotations

import itertools
import os
import struct
from array import array
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiobpf.collector import speedups
from aiobpf.collector.frames import Chain
from aiobpf.collector.model import Stacks
from aiobpf.collector.speedups import (
    FAST_DEPTH,
    LevelLayout,
    StrLayout,
    TaskLayout,
    known_level_py,
    plan_runs_py,
    short_ascii_py,
    stack_level_py,
    task_heads_py,
    walk_links_py,
)

MAX_ADDR = 0x7FFF_FFFF_FFFF
U64 = (1 << 64) - 1


def compiled() -> Any:
    """The C module; a failure (not a skip) when it is not built."""
    if os.environ.get("AIOBPF_PURE_PYTHON") == "1":
        pytest.fail("AIOBPF_PURE_PYTHON=1 is set: the compiled loops are not tested")
    from aiobpf.collector import _speedups  # type: ignore[attr-defined]
    assert _speedups.ABI == speedups.ABI, "the built module is older than its source"
    assert speedups.COMPILED
    return _speedups


def test_the_compiled_module_is_built_and_used() -> None:
    c = compiled()
    assert speedups.plan_runs is c.plan_runs
    assert speedups.known_level is c.known_level
    assert speedups.short_ascii is c.short_ascii
    assert speedups.walk_links is c.walk_links
    assert speedups.stack_level is c.stack_level
    assert speedups.task_heads is c.task_heads


# -- plan_runs ---------------------------------------------------------------------
addresses = st.one_of(
    st.integers(0, MAX_ADDR + 10),
    st.integers(0x5555_0000_0000, 0x5555_0000_4000),   # close together: runs form
    st.sampled_from([-1, -(1 << 70), 1 << 64, (1 << 64) - 1, MAX_ADDR, MAX_ADDR - 8]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(addresses, max_size=60), st.integers(0, 5000), st.sampled_from([0, 16, 2048]))
def test_plan_runs_matches_its_reference(addrs: list[int], size: int, run: int) -> None:
    assert compiled().plan_runs(addrs, size, run, MAX_ADDR) == plan_runs_py(addrs, size, run,
                                                                            MAX_ADDR)


def test_plan_runs_packs_close_objects_into_one_range() -> None:
    offsets, iov, starts, firsts = compiled().plan_runs([1000, 1040, 0, 1020, 9000], 32, 2048,
                                                        MAX_ADDR)
    assert offsets == [0, 40, -1, 20, 72]
    assert struct.unpack("<4Q", iov) == (1000, 72, 9000, 32)
    assert starts == [0, 72, 104]
    assert firsts == [0, 4, 5]


# -- known_level -------------------------------------------------------------------
SPAN = 256
TYPES = (0x1000, 0x2000, 0x3000)          # a coroutine type, a future type, another
CODES = (0xC0DE00, 0xC0DE80)


def layout(sp: bool, tag: int) -> LevelLayout:
    """A generator as 3.14 (stack pointer, tagged refs) or 3.11-3.13 (stack top) lays it
    out: type at 8, frame state (a byte) at 20, code at 64, instruction at 80."""
    return LevelLayout(o_type=8, signature=(8, 0, 20, 1, 64, 0, 80, 0),
                       sp_at=120 if sp else -1, stacktop_at=-1 if sp else 124,
                       locals_at=136, back=8, yf_depth=1, span=SPAN, tag=tag,
                       clear=U64 & ~3 if sp else U64)


def put_signature(buf: bytearray, at: int, tp: int, state: int, code: int,
                  instr: int) -> None:
    struct.pack_into("<Q", buf, at + 8, tp)
    struct.pack_into("<b", buf, at + 20, state)
    struct.pack_into("<Q", buf, at + 64, code)
    struct.pack_into("<Q", buf, at + 80, instr)


def signature(buf: bytearray, at: int) -> tuple[int, ...]:
    """The key ``awaiting_at`` holds, its fields in the order of their offsets."""
    return (struct.unpack_from("<Q", buf, at + 8)[0], struct.unpack_from("<b", buf, at + 20)[0],
            struct.unpack_from("<Q", buf, at + 64)[0], struct.unpack_from("<Q", buf, at + 80)[0])


@st.composite
def levels(draw: st.DrawFn) -> tuple[bytearray, list[int], list[int], list[Chain],
                                      dict[tuple[int, ...], str], set[int], LevelLayout]:
    lay = draw(st.sampled_from([layout(True, 1), layout(True, -1), layout(False, -1)]))
    count = draw(st.integers(0, 12))
    buf = bytearray(draw(st.binary(min_size=count * SPAN, max_size=count * SPAN + 40)))
    # Mostly what a real read gives (valid objects at their offsets), some of everything.
    objs = [draw(st.sampled_from([0x7F00_0000_0000 + 0x200 * i] * 6
                                 + [0, 5, U64, -3, 0x7F00_0000_0000]))
            for i in range(count)]
    offsets = [draw(st.sampled_from([i * SPAN] * 8 + [-1, len(buf) - SPAN + 1, len(buf) + 100,
                                                      i * SPAN + 3]))
               for i in range(count)]
    states = [-1, 0, 1, 2, 3]
    known = {}
    for i in range(count):
        at = i * SPAN
        kind = draw(st.sampled_from(["known"] * 4 + ["same"] * 2 + ["end", "random"]))
        if kind == "random":
            continue
        if kind == "end":
            struct.pack_into("<Q", buf, at + 8, draw(st.sampled_from(TYPES)))
            continue
        if kind == "same" and i:   # as the object before it (neighbours are mostly alike)
            buf[at:at + 96] = buf[at - SPAN:at - SPAN + 96]
        else:
            put_signature(buf, at, draw(st.sampled_from(TYPES)), draw(st.sampled_from(states)),
                          draw(st.sampled_from(CODES)), draw(st.integers(0, 64)))
        if lay.sp_at >= 0:
            obj = objs[i] if 0 <= objs[i] <= U64 else 0
            slot = draw(st.one_of(st.integers(0, U64),
                                  st.integers(obj + 100, obj + SPAN + 16).map(lambda v: v & U64),
                                  st.integers(obj + 144, obj + SPAN).map(lambda v: v & U64)))
            struct.pack_into("<Q", buf, at + lay.sp_at, slot)
        else:
            tops = [-5, 0, 1, 2, 14, 15, 16, 40, 1 << 20, (1 << 20) + 1]
            struct.pack_into("<i", buf, at + lay.stacktop_at, draw(st.sampled_from(tops)))
        known[signature(buf, at)] = None
    awaiting_at = {sig: f"frame{n}" for n, sig in enumerate(known)
                   if draw(st.sampled_from([True, True, True, False]))}
    ends = set(draw(st.sets(st.sampled_from(TYPES))))
    outs = [Chain() for _ in range(count)]
    for out, obj in zip(outs, objs, strict=True):
        if draw(st.sampled_from([False] * 5 + [True])):
            out.seen.add(obj)   # the chain has met it: a loop
    return buf, offsets, objs, outs, awaiting_at, ends, lay


def _copy(chains: list[Chain]) -> list[Chain]:
    copies = []
    for chain in chains:
        twin = Chain()
        twin.seen = set(chain.seen)
        copies.append(twin)
    return copies


def _state(chain: Chain) -> tuple:
    return (chain.frames, chain.errors, chain.seen, chain.awaited, chain.innermost_state,
            chain.unread)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(levels())
def test_known_level_matches_its_reference(case: tuple) -> None:
    buf, offsets, objs, outs, awaiting_at, ends, lay = case
    theirs = _copy(outs)
    got = compiled().known_level(buf, offsets, objs, outs, awaiting_at, ends, tuple(lay))
    want = known_level_py(buf, offsets, objs, theirs, awaiting_at, ends, lay)
    assert [outs.index(o) for o in got[0]] == [theirs.index(o) for o in want[0]]
    assert got[1:] == want[1:]
    assert [_state(o) for o in outs] == [_state(o) for o in theirs]


def test_known_level_follows_a_known_generator_to_what_it_awaits() -> None:
    lay = layout(True, 1)
    obj, awaited = 0x7F00_0000_1000, 0x7F00_0000_9000
    buf = bytearray(SPAN)
    put_signature(buf, 0, TYPES[0], 3, CODES[0], 40)
    struct.pack_into("<Q", buf, lay.sp_at, obj + 200 + 8)   # top of stack: slot at 200
    struct.pack_into("<Q", buf, 200, awaited | 1)            # a reference, tag bit 1 ...
    chain = Chain()
    sig = signature(buf, 0)
    args = (buf, [0], [obj], [chain], {sig: "frame"}, set(), tuple(lay))
    going, nexts, deferred = compiled().known_level(*args)
    # ... is the int tag here (tag 1): nothing is awaited through it.
    assert (going, nexts, deferred) == ([], [], []) and chain.frames == ["frame"]
    struct.pack_into("<Q", buf, 200, awaited | 2)            # a deferred reference
    chain = Chain()
    args = (buf, [0], [obj], [chain], {sig: "frame"}, set(), tuple(lay))
    assert compiled().known_level(*args) == ([chain], [awaited], [])
    assert chain.innermost_state == "suspended" and chain.seen == {obj}


def test_known_level_refuses_a_short_buffer_and_bad_arguments() -> None:
    c = compiled()
    lay = tuple(layout(True, 1))
    chain = Chain()
    # The object's bytes would end past the buffer: left to the caller, untouched.
    assert c.known_level(bytearray(SPAN - 1), [0], [0x1000], [chain], {}, {TYPES[0]},
                         lay) == ([], [], [0])
    assert chain.seen == set()
    with pytest.raises(ValueError):
        c.known_level(bytearray(SPAN), [0, 0], [1], [chain], {}, set(), lay)
    with pytest.raises(TypeError):
        c.known_level(bytearray(SPAN), [0], [1], [chain], {}, set(), lay[:-1])


# -- stack_level -------------------------------------------------------------------
def _stacks(draw: st.DrawFn, frames: list[str]) -> Stacks:
    """A tree with a few nodes already, sometimes full (or nearly)."""
    tree = Stacks(limit=draw(st.sampled_from([1, 3, 1000])))
    for _ in range(draw(st.integers(0, 3))):
        tree.child(draw(st.integers(0, len(tree.frames) - 1)), draw(st.sampled_from(frames)))
    return tree


def _twin(tree: Stacks) -> Stacks:
    twin = Stacks(tree.limit)
    twin.frames, twin.parents, twin.children = (list(tree.frames), list(tree.parents),
                                                dict(tree.children))
    return twin


def _tree(tree: Stacks) -> tuple:
    return tree.frames, tree.parents, tree.children


@st.composite
def stack_levels(draw: st.DrawFn) -> tuple:
    """``levels``' objects as one level of chains kept as stacks: some chains at nodes
    already, some that met the object before (a loop), some too deep."""
    buf, offsets, objs, outs, awaiting_at, ends, lay = draw(levels())
    count = len(objs)
    tree = _stacks(draw, [*awaiting_at.values(), "other"])
    objs = [obj & U64 for obj in objs]
    chains = draw(st.permutations(range(count)))
    depth = draw(st.sampled_from([0, 1, 2, FAST_DEPTH - 1, FAST_DEPTH]))
    nodes = array("q", [draw(st.integers(0, len(tree.frames) - 1)) for _ in range(count)])
    visited = array("Q", bytes(8 * FAST_DEPTH * count))
    for k, i in enumerate(chains):
        if depth and outs[k].seen:   # the chain met its object before
            visited[i * FAST_DEPTH + draw(st.integers(0, depth - 1))] = objs[k]
    return buf, offsets, objs, chains, nodes, visited, depth, awaiting_at, ends, lay, tree


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stack_levels())
def test_stack_level_matches_its_reference(case: tuple) -> None:
    buf, offsets, objs, chains, nodes, visited, depth, awaiting_at, ends, lay, tree = case
    theirs = (array("q", nodes), array("Q", visited), _twin(tree))
    got = compiled().stack_level(buf, offsets, objs, chains, nodes, visited, depth,
                                 awaiting_at, ends, tuple(lay), tree)
    want = stack_level_py(buf, offsets, objs, chains, theirs[0], theirs[1], depth,
                          awaiting_at, ends, lay, theirs[2])
    assert got == want
    assert (nodes, visited, _tree(tree)) == (theirs[0], theirs[1], _tree(theirs[2]))


def test_stack_level_follows_known_generators_as_one_shared_stack() -> None:
    lay = layout(True, 1)
    first, second, awaited = 0x7F00_0000_1000, 0x7F00_0000_2000, 0x7F00_0000_9000
    buf = bytearray(2 * SPAN)
    for at, obj in ((0, first), (SPAN, second)):   # two tasks parked at the same place
        put_signature(buf, at, TYPES[0], 3, CODES[0], 40)
        struct.pack_into("<Q", buf, at + lay.sp_at, obj + 200 + 8)
        struct.pack_into("<Q", buf, at + 200, awaited | 2)
    tree = Stacks()
    nodes, visited = array("q", [0, 0]), array("Q", bytes(16 * FAST_DEPTH))
    known = {signature(buf, 0): "frame"}
    got = compiled().stack_level(buf, [0, SPAN], [first, second], [0, 1], nodes, visited, 0,
                                 known, set(), tuple(lay), tree)
    assert got == ([0, 1], [awaited, awaited], [], [], [])
    assert list(nodes) == [1, 1] and tree.frames_of(1) == ["frame"]
    # Next level: a future ends both chains; an object met before is left to the long way.
    end = bytearray(SPAN)
    struct.pack_into("<Q", end, 8, TYPES[1])
    assert compiled().stack_level(end, [0, 0], [awaited, second], [0, 1], nodes, visited, 1,
                                  known, {TYPES[1]}, tuple(lay), tree) == ([], [], [], [], [1])


def test_stack_level_gives_the_slot_of_a_deep_stack_to_read() -> None:
    lay = layout(True, 1)
    obj = 0x7F00_0000_1000
    buf = bytearray(SPAN)
    put_signature(buf, 0, TYPES[0], 3, CODES[0], 40)
    struct.pack_into("<Q", buf, lay.sp_at, obj + 4096 + 8)   # its stack top: past SPAN
    tree, nodes, visited = Stacks(), array("q", [0]), array("Q", bytes(8 * FAST_DEPTH))
    got = compiled().stack_level(buf, [0], [obj], [0], nodes, visited, 0,
                                 {signature(buf, 0): "frame"}, set(), tuple(lay), tree)
    assert got == ([], [], [0], [obj + 4096], []) and list(nodes) == [1]


def test_stack_level_refuses_bad_arguments() -> None:
    c = compiled()
    lay = tuple(layout(True, 1))
    with pytest.raises(IndexError):   # chain 1 has no row in visited
        c.stack_level(bytearray(SPAN), [0], [1], [1], array("q", [0, 0]),
                      array("Q", bytes(8 * FAST_DEPTH)), 0, {}, set(), lay, Stacks())
    with pytest.raises(TypeError):
        c.stack_level(bytearray(SPAN), [0], [1], [0], array("i", [0, 0]),
                      array("Q", bytes(8 * FAST_DEPTH)), 0, {}, set(), lay, Stacks())
    with pytest.raises(ValueError):
        c.stack_level(bytearray(SPAN), [0, 0], [1], [0], array("q", [0]),
                      array("Q", bytes(8 * FAST_DEPTH)), 0, {}, set(), lay, Stacks())


# -- task_heads --------------------------------------------------------------------
TASK = TaskLayout(state_at=40, coro_at=48, awaited_at=64, is_set_at=72, span=80)
PENDING = 0


@st.composite
def task_batches(draw: st.DrawFn) -> tuple[bytearray, list[int]]:
    count = draw(st.integers(0, 12))
    buf = bytearray(draw(st.binary(min_size=count * TASK.span,
                                   max_size=count * TASK.span + 30)))
    for i in range(count):
        at = i * TASK.span
        struct.pack_into("<i", buf, at + TASK.state_at,
                         draw(st.sampled_from([PENDING] * 4 + [1, 2, -1])))
        struct.pack_into("<Q", buf, at + TASK.coro_at, draw(st.sampled_from([0, 0x7F00, U64])))
        struct.pack_into("<Q", buf, at + TASK.awaited_at, draw(st.sampled_from([0, 0x5500])))
        buf[at + TASK.is_set_at] = draw(st.sampled_from([0, 0, 1, 255]))
    offsets = [draw(st.sampled_from([i * TASK.span] * 6 + [-1, len(buf) - TASK.span + 1]))
               for i in range(count)]
    return buf, offsets


@settings(max_examples=200, deadline=None)
@given(task_batches())
def test_task_heads_matches_its_reference(case: tuple[bytearray, list[int]]) -> None:
    buf, offsets = case
    assert compiled().task_heads(buf, offsets, tuple(TASK), PENDING) == task_heads_py(
        buf, offsets, TASK, PENDING)


def test_task_heads_sorts_a_batch() -> None:
    buf = bytearray(4 * TASK.span)
    for i, (state, coro, awaited, is_set) in enumerate(
            [(PENDING, 0x10, 0x20, 0), (1, 0x10, 0, 0), (PENDING, 0x30, 0x40, 1),
             (PENDING, 0, 0, 0)]):
        struct.pack_into("<iiQQQB", buf, i * TASK.span + TASK.state_at, state, 0, coro, 0,
                         awaited, is_set)
    offsets = [i * TASK.span for i in range(4)] + [-1]
    # pending and simple; finished (left out); awaited by a set; no coroutine; not read
    assert compiled().task_heads(buf, offsets, tuple(TASK), PENDING) == (
        [0], [0x10], [0x20], [2, 3, 4])
    with pytest.raises(ValueError):
        compiled().task_heads(buf, offsets, tuple(TASK._replace(span=70)), PENDING)


# -- short_ascii -------------------------------------------------------------------
STR = StrLayout(o_type=8, length=16, state=32, ascii_mask=(7 << 2) | (1 << 5) | (1 << 6),
                ascii_bits=(1 << 2) | (1 << 5) | (1 << 6), ascii_size=40, peek=88)
STR_TYPE, OTHER_TYPE = 0xAA00, 0xBB00


@st.composite
def str_heads(draw: st.DrawFn) -> tuple[bytearray, list[int]]:
    count = draw(st.integers(0, 10))
    buf = bytearray(draw(st.binary(min_size=count * STR.peek, max_size=count * STR.peek + 30)))
    for i in range(count):
        at = i * STR.peek
        struct.pack_into("<Q", buf, at + STR.o_type,
                         draw(st.sampled_from([STR_TYPE] * 4 + [OTHER_TYPE])))
        struct.pack_into("<q", buf, at + STR.length,
                         draw(st.sampled_from([0, 1, 5, 47, 48, 49, -1, 1 << 40])))
        state = draw(st.sampled_from([STR.ascii_bits] * 4 + [0, STR.ascii_bits | 1,
                                                              STR.ascii_bits ^ (1 << 6)]))
        struct.pack_into("<I", buf, at + STR.state, state)
    offsets = [draw(st.sampled_from([i * STR.peek] * 6 + [-1, len(buf) - STR.peek + 1]))
               for i in range(count)]
    return buf, offsets


@settings(max_examples=200, deadline=None)
@given(str_heads())
def test_short_ascii_matches_its_reference(case: tuple[bytearray, list[int]]) -> None:
    buf, offsets = case
    got = compiled().short_ascii(buf, offsets, tuple(STR), {STR_TYPE})
    assert got == short_ascii_py(buf, offsets, STR, {STR_TYPE})


def test_short_ascii_reads_a_compact_ascii_name_and_leaves_the_rest() -> None:
    buf = bytearray(2 * STR.peek)
    for i, (tp, text) in enumerate([(STR_TYPE, b"leaf-7\xff"), (OTHER_TYPE, b"x")]):
        struct.pack_into("<QqI", buf, i * STR.peek + 8, tp, len(text), 0)
        struct.pack_into("<I", buf, i * STR.peek + STR.state, STR.ascii_bits)
        buf[i * STR.peek + STR.ascii_size:i * STR.peek + STR.ascii_size + len(text)] = text
    got = compiled().short_ascii(buf, [0, STR.peek, -1], tuple(STR), {STR_TYPE})
    assert got == ["leaf-7\xff", None, None]   # a byte that is not ASCII: Latin-1


# -- walk_links --------------------------------------------------------------------
PAGE = 4096
LIST_BASE = 0x7E00_0000_0000


class Unmapped(Exception):
    """What the fake page_of raises for a page it does not have."""


@st.composite
def linked_lists(draw: st.DrawFn) -> tuple[dict[int, bytes], int, int, int, int]:
    """Pages holding a list: nodes in order, then where the last one leads (the head,
    0, a node before it, an unmapped page, past 2**64); next pointers that may span two
    pages."""
    pages = draw(st.integers(1, 4))
    memory = bytearray(PAGE * pages)
    next_off = draw(st.sampled_from([0, 8, 20, PAGE - 4]))
    slots = draw(st.lists(st.integers(0, pages * PAGE // 64 - 1), unique=True, max_size=40))
    nodes = [LIST_BASE + 64 * slot for slot in slots]
    head = draw(st.sampled_from([LIST_BASE + PAGE * pages - 64, *nodes[:1]]))
    nodes = [node for node in nodes if node != head]
    ends = [head, 0, LIST_BASE + PAGE * (pages + 3), U64 - 4, *nodes[:3]]
    chain = [head, *nodes, draw(st.sampled_from(ends))]
    for here, there in itertools.pairwise(chain):
        at = here - LIST_BASE + next_off
        if at + 8 <= len(memory):
            struct.pack_into("<Q", memory, at, there & U64)
    table = {LIST_BASE + PAGE * i: bytes(memory[PAGE * i:PAGE * (i + 1)]) for i in range(pages)}
    return (table, head, next_off, draw(st.sampled_from([1, 3, 10, 1 << 22])),
            draw(st.sampled_from([0, 0, 24, LIST_BASE + 8, U64])))


def _page_of(table: dict[int, bytes]) -> Any:
    def page_of(base: int) -> bytes:
        if base not in table:
            raise Unmapped(base)
        return table[base]
    return page_of


@settings(max_examples=250, deadline=None)
@given(linked_lists())
def test_walk_links_matches_its_reference(case: tuple[dict[int, bytes], int, int, int, int]
                                          ) -> None:
    table, head, next_off, limit, minus = case
    got = compiled().walk_links(_page_of(table), head, next_off, limit, (Unmapped,), minus)
    want = walk_links_py(_page_of(table), head, next_off, limit, (Unmapped,), minus)
    assert got[:2] == want[:2]
    assert type(got[2]) is type(want[2])


def test_walk_links_ends_at_the_head_and_stops_a_loop_that_misses_it() -> None:
    page = bytearray(PAGE)
    for node, following in ((0, 64), (64, 128), (128, 0)):   # head 0 -> 64 -> 128 -> head
        struct.pack_into("<Q", page, node, LIST_BASE + following)
    table = {LIST_BASE: bytes(page)}
    walk = compiled().walk_links
    assert walk(_page_of(table), LIST_BASE, 0, 100, (Unmapped,)) == (
        [LIST_BASE + 64, LIST_BASE + 128], speedups.WALK_END, None)
    struct.pack_into("<Q", page, 128, LIST_BASE + 64)         # 128 -> 64: never the head
    nodes, status, _ = walk(_page_of({LIST_BASE: bytes(page)}), LIST_BASE, 0, 100, (Unmapped,))
    assert status == speedups.WALK_LOOPS and len(nodes) < 10
    struct.pack_into("<Q", page, 128, LIST_BASE + 5 * PAGE)   # to a page that is not there
    nodes, status, error = walk(_page_of({LIST_BASE: bytes(page)}), LIST_BASE, 0, 100,
                                (Unmapped,))
    # The last node is the one whose next pointer could not be read (linked_tasks drops it).
    assert (nodes, status, type(error)) == ([LIST_BASE + 64, LIST_BASE + 128,
                                             LIST_BASE + 5 * PAGE], speedups.WALK_FAULT,
                                            Unmapped)
    with pytest.raises(Unmapped):   # not one of the faults given: it propagates
        walk(_page_of({LIST_BASE: bytes(page)}), LIST_BASE, 0, 100, (KeyError,))


def test_the_python_signature_is_the_key_frames_stores() -> None:
    """known_level_py looks frames up by ``signature_of``; Frames stores them by its own
    field reader: on every layout aiobpf knows, both read the same key from the same bytes
    (else the Python loop would decide nothing)."""
    from aiobpf.collector.frames import Frames
    from aiobpf.collector.objects import Objects
    from tests.unit.test_fuzz import FakeMemory, layouts

    blob = bytes(range(256)) * 4
    for lay in layouts():
        frames = Frames(Objects(FakeMemory(b""), lay))  # type: ignore[arg-type]
        assert len(blob) >= frames.gen_span
        assert speedups.signature_of(frames.level_layout, blob, 0) == frames._signature(blob)
