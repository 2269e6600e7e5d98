"""The collector's hottest loops, in Python and compiled (``_speedups.c``).

A read of a big target spends most of its time in loops over every object: planning
the ranges of a packed read (``memory.RemoteMemory.read_packed``), stepping every await
chain one object further (``frames.Frames._level``), decoding task names
(``objects.Objects.short_names``), walking the task lists of 3.14+
(``tasks.walk_llist``) and, for the daemon's summary, sorting a batch of 3.14+ tasks
(``task_heads``) and following their chains as shared stacks (``stack_level``).  The
C module does them several times faster; the Python functions here say what they do,
run where the module is not built, and are the oracle the C is tested against
(``tests/unit/test_speedups.py``, on generated input; ``tests/integration/
test_speedups.py`` and ``test_parked_summary.py``, on real processes).

None of them reads the target: they decode bytes already read, and the walk asks its
``page_of`` (``RemoteMemory.page``) for each page it follows a pointer into.
``AIOBPF_PURE_PYTHON=1`` in the environment makes aiobpf use the Python ones.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from hashlib import sha256
from pathlib import Path
from typing import Any, NamedTuple, Protocol

_Q = struct.Struct("<Q").unpack_from
_i = struct.Struct("<i").unpack_from
_U64 = (1 << 64) - 1
ABI = 4   # the C module's SPEEDUPS_ABI that this module's calls expect


class ChainState(Protocol):
    """What ``known_level`` changes of a chain (``frames.Chain``)."""

    frames: list[Any]
    errors: list[str]
    seen: set[int]
    awaited: int
    innermost_state: str


class LevelLayout(NamedTuple):
    """Where a generator's fields are, counted from the object's start."""

    o_type: int
    signature: tuple[int, ...]   # (offset, 1 for a signed byte else 0 for a u64) x 4
    sp_at: int         # the frame's stack pointer (3.14+), or -1
    stacktop_at: int   # the frame's stack top, an int (3.11-3.13), or -1
    locals_at: int     # the frame's first local
    back: int          # bytes below the stack pointer of what the frame awaits
    yf_depth: int      # slots below the stack top of what the frame awaits
    span: int          # bytes read of each object
    tag: int           # the low bits of a tagged int on the stack (3.14+), or -1
    clear: int         # the mask that makes a stack reference a pointer


def signature_of(layout: LevelLayout, buf: bytes | bytearray, off: int) -> tuple[int, ...]:
    """The signature of the generator at ``buf[off:]``: its type, frame state, code and
    instruction pointer, in the order of their offsets (``Frames._signature``)."""
    sig = layout.signature
    return tuple(struct.unpack_from("<b", buf, off + sig[k])[0] if sig[k + 1]
                 else _Q(buf, off + sig[k])[0] for k in range(0, 8, 2))


class Plan(NamedTuple):
    """How ``read_packed`` reads ``size`` bytes at each of a list of addresses."""

    offsets: list[int]   # where each object's bytes are in the packed buffer (-1: unread)
    iov: bytearray       # the ranges read, as (start, length) u64 pairs: struct iovec
    starts: list[int]    # where each range's bytes are in the buffer; last: its length
    firsts: list[int]    # the index of each range's first object; last: len(addrs)


def plan_runs_py(addrs: Sequence[int], size: int, run: int, max_addr: int) -> Plan:
    """The plan of a packed read of ``size`` bytes at each of ``addrs`` (an address
    that cannot be read gets offset -1).  An object that starts after a range's start
    and ends within ``run`` bytes of it is read with that range, so a batch of objects
    close together costs one range."""
    offsets: list[int] = []
    runs: list[list[int]] = []   # [start, end, index of the first object]
    pos = 0
    highest = max_addr - size
    for i, addr in enumerate(addrs):
        last = runs[-1] if runs else None
        if last is not None and last[0] <= addr and addr + size <= last[0] + run:
            last[1] = max(last[1], addr + size)
            offsets.append(pos + addr - last[0])
        elif 0 < addr <= highest:
            if last is not None:   # the run before ends
                pos += last[1] - last[0]
            runs.append([addr, addr + size, i])
            offsets.append(pos)
        else:
            offsets.append(-1)
    iov = bytearray(16 * len(runs))
    starts, at = [], 0
    for r, (start, end, _) in enumerate(runs):
        struct.pack_into("<QQ", iov, 16 * r, start, end - start)
        starts.append(at)
        at += end - start
    return Plan(offsets, iov, [*starts, at], [r[2] for r in runs] + [len(addrs)])


def _stack_object(layout: LevelLayout, buf: bytes | bytearray, off: int,
                  obj: int) -> int | None:
    """What a generator in a known awaiting state awaits (0: nothing); None when that
    lies on its stack beyond the bytes read."""
    span = layout.span
    if layout.sp_at >= 0:
        slot = _Q(buf, off + layout.sp_at)[0] - layout.back
        if slot < obj + layout.locals_at:
            return 0
        at = slot - obj
        if at + 8 > span:
            return None
        bits = _Q(buf, off + at)[0]
        return 0 if bits & 3 == layout.tag else bits & layout.clear
    top = _i(buf, off + layout.stacktop_at)[0]
    if top < layout.yf_depth or top > 1 << 20:
        return 0
    at = layout.locals_at + 8 * (top - layout.yf_depth)
    return _Q(buf, off + at)[0] if at + 8 <= span else None


def _stack_slot(layout: LevelLayout, buf: bytes | bytearray, off: int, obj: int) -> int:
    """The address of the stack slot ``_stack_object`` found beyond the bytes read."""
    if layout.sp_at >= 0:
        return int(_Q(buf, off + layout.sp_at)[0]) - layout.back
    return obj + layout.locals_at + 8 * (_i(buf, off + layout.stacktop_at)[0] - layout.yf_depth)


def known_level_py(buf: bytes | bytearray, offsets: Sequence[int], objs: Sequence[int],
                   outs: Sequence[ChainState], awaiting_at: dict[tuple[int, ...], Any],
                   ends: set[int], layout: LevelLayout
                   ) -> tuple[list[ChainState], list[int], list[int]]:
    """One step of each chain of ``outs`` at ``objs`` (read into ``buf`` at ``offsets``),
    for the objects that what is known already decodes:

    - a generator whose signature is in ``awaiting_at`` (seen awaiting before): its
      frame is that one, and it awaits the object on top of its value stack;
    - an object of a type in ``ends`` (no frame, nothing wrapped): the chain awaits it.

    Returns (the chains that go on, the objects they await next, the indices of the
    objects left undecided: ``Frames._level`` decodes those, and nothing of their
    chains has been changed)."""
    next_outs: list[ChainState] = []
    next_objs: list[int] = []
    deferred: list[int] = []
    span = layout.span
    for i, (out, obj, off) in enumerate(zip(outs, objs, offsets, strict=True)):
        if off < 0 or off + span > len(buf) or not 0 <= obj <= _U64:
            deferred.append(i)
            continue
        frame = awaiting_at.get(signature_of(layout, buf, off))
        if frame is not None:
            nxt = _stack_object(layout, buf, off, obj)
            if nxt is None:
                deferred.append(i)
                continue
        elif _Q(buf, off + layout.o_type)[0] not in ends:
            deferred.append(i)
            continue
        if obj in out.seen:
            out.errors.append("await chain loops")
            continue
        out.seen.add(obj)
        if frame is None:
            out.awaited = obj
            continue
        out.frames.append(frame)
        out.innermost_state = "suspended"
        if nxt:
            next_outs.append(out)
            next_objs.append(nxt)
    return next_outs, next_objs, deferred


FAST_DEPTH = 32   # levels of a chain that stack_level follows (deeper ones: the long way)


class StackTree(Protocol):
    """What ``stack_level`` needs of ``model.Stacks``."""

    def child(self, parent: int, frame: Any) -> int | None: ...


def stack_level_py(buf: bytes | bytearray, offsets: Sequence[int], objs: Sequence[int],
                   chains: Sequence[int], nodes: Any, visited: Any, depth: int,
                   awaiting_at: dict[tuple[int, ...], Any], ends: set[int],
                   layout: LevelLayout, stacks: StackTree
                   ) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """``known_level`` for chains kept as stacks (``model.Stacks``): chain ``chains[k]``
    is at ``objs[k]`` (read into ``buf`` at ``offsets[k]``) at level ``depth``;
    ``nodes[i]`` is chain i's stack so far and ``visited[i * FAST_DEPTH + d]`` the
    object it met at level d (both arrays, written here).

    A generator seen awaiting adds its frame and leads on to what it awaits; an object
    of a type in ``ends`` ends the chain.  Returns (the chains that go on, their next
    objects, the chains whose next object is in a stack slot beyond the bytes read, the
    addresses of those slots, the chains left to the long way: an object not known, an
    object met before in the chain, deeper than FAST_DEPTH, or the tree full).  A chain
    left is left as a whole: the caller follows it again from its start."""
    going: list[int] = []
    next_objs: list[int] = []
    beyond: list[int] = []
    slots: list[int] = []
    left: list[int] = []
    span = layout.span
    for i, obj, off in zip(chains, objs, offsets, strict=True):
        row = i * FAST_DEPTH
        if (depth >= FAST_DEPTH or off < 0 or off + span > len(buf) or not 0 <= obj <= _U64
                or obj in visited[row:row + depth]):
            left.append(i)
            continue
        frame = awaiting_at.get(signature_of(layout, buf, off))
        if frame is None:
            if _Q(buf, off + layout.o_type)[0] not in ends:
                left.append(i)
            continue   # (else it ends the chain: what the task awaits)
        nxt = _stack_object(layout, buf, off, obj)
        slot = 0 if nxt is not None else _stack_slot(layout, buf, off, obj) & _U64
        node = None if nxt is None and not slot else stacks.child(nodes[i], frame)
        if node is None:
            left.append(i)
            continue
        nodes[i] = node
        visited[row + depth] = obj
        if nxt is None:
            beyond.append(i)
            slots.append(slot)
        elif nxt:
            going.append(i)
            next_objs.append(nxt)
    return going, next_objs, beyond, slots, left


class TaskLayout(NamedTuple):
    """Where the fields of a 3.14+ task are that ``task_heads`` decodes."""

    state_at: int     # task_state, an int
    coro_at: int      # task_coro
    awaited_at: int   # task_awaited_by: the awaiter, or a set of them
    is_set_at: int    # task_awaited_by_is_set, a byte
    span: int         # bytes read of each task


def task_heads_py(buf: bytes | bytearray, offsets: Sequence[int], layout: TaskLayout,
                  pending: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Sort the tasks read into ``buf`` (task i at ``offsets[i]``): the pending ones with
    a coroutine and one awaiter or none (their indices, coroutines and awaiters, 0 for
    none), and the indices of the others that may be pending (not read, or awaited by a
    set): ``tasks.decode_task`` decodes those.  Tasks in another state are left out."""
    simple: list[int] = []
    coros: list[int] = []
    awaited: list[int] = []
    others: list[int] = []
    for i, off in enumerate(offsets):
        if off < 0 or off + layout.span > len(buf):
            others.append(i)
            continue
        if _i(buf, off + layout.state_at)[0] != pending:
            continue
        coro = _Q(buf, off + layout.coro_at)[0]
        by = _Q(buf, off + layout.awaited_at)[0]
        if not coro or (by and buf[off + layout.is_set_at]):
            others.append(i)
            continue
        simple.append(i)
        coros.append(coro)
        awaited.append(by)
    return simple, coros, awaited, others


class StrLayout(NamedTuple):
    """Where a str object's fields are, and what its state says of a compact ASCII one."""

    o_type: int
    length: int        # ob_size: characters
    state: int         # the state bit field (a u32)
    ascii_mask: int    # state bits that say kind, compact and ascii
    ascii_bits: int    # their values for a compact ASCII str
    ascii_size: int    # where a compact ASCII str's text starts
    peek: int          # bytes read of each str


def short_ascii_py(buf: bytes | bytearray, offsets: Sequence[int], layout: StrLayout,
                   str_types: set[int]) -> list[str | None]:
    """The text of each str whose first ``peek`` bytes are at ``buf[offsets[i]:]`` when
    it is of a type in ``str_types`` and compact ASCII with its text within those bytes;
    else None (the caller decodes it the long way).  Bytes that are not ASCII despite
    the flags are taken as Latin-1, one character each."""
    out: list[str | None] = []
    peek, start = layout.peek, layout.ascii_size
    for at in offsets:
        text = None
        if 0 <= at <= len(buf) - peek and _Q(buf, at + layout.o_type)[0] in str_types:
            length = struct.unpack_from("<q", buf, at + layout.length)[0]
            state = struct.unpack_from("<I", buf, at + layout.state)[0]
            if state & layout.ascii_mask == layout.ascii_bits and 0 <= length <= peek - start:
                text = buf[at + start:at + start + length].decode("latin-1")
        out.append(text)
    return out


PAGE = 4096
WALK_END, WALK_LOOPS, WALK_LIMIT, WALK_FAULT = range(4)   # walk_links' status


def walk_links_py(page_of: Callable[[int], bytes], head: int, next_off: int, limit: int,
                  faults: tuple[type[BaseException], ...], minus: int = 0
                  ) -> tuple[list[int], int, BaseException | None]:
    """The nodes of the circular list at ``head`` (each node's next pointer at
    ``next_off``), read through ``page_of(base)``, the 4 KB page at ``base``; each
    given less ``minus`` (modulo 2**64: the address of the object holding it).

    Returns (the nodes in order, a status, the error): WALK_END when the list came back
    to its head (or to 0); WALK_LOOPS when it loops without coming back (Brent's cycle
    detection: the node met twice is the last); WALK_LIMIT after ``limit`` nodes;
    WALK_FAULT when ``page_of`` raised one of ``faults`` (the nodes before it, and that
    exception).  Other exceptions propagate."""
    nodes: list[int] = []

    def page(base: int) -> bytes:
        got = page_of(base)
        if not isinstance(got, bytes) or len(got) != PAGE:
            raise TypeError("page_of must return the page's 4096 bytes")
        if base + PAGE > _U64 + 1:
            raise ValueError("page_of gave a page past 2**64")
        return got

    def pointer(addr: int) -> int:
        base = addr & -PAGE
        start = addr - base
        if start <= PAGE - 8:
            return int(_Q(page(base), start)[0])
        low = page(base)[start:]
        return int(_Q(low + page(base + PAGE)[:8 - len(low)], 0)[0])

    try:
        node = pointer(head + next_off)
        saved, power, lam = head, 1, 0
        while node and node != head:
            nodes.append((node - minus) & _U64)
            if node == saved:
                return nodes, WALK_LOOPS, None
            if len(nodes) >= limit:
                return nodes, WALK_LIMIT, None
            lam += 1
            if lam == power:   # Brent: a loop that misses the head ends at ``saved``
                saved, power, lam = node, power * 2, 0
            node = pointer(node + next_off)
    except faults as exc:
        return nodes, WALK_FAULT, exc
    return nodes, WALK_END, None


def _compiled() -> tuple[Any, str]:
    """The C module, or None and why not (not built, switched off, or built from
    another source than the one beside it: a stale in-place build)."""
    if os.environ.get("AIOBPF_PURE_PYTHON") == "1":
        return None, "switched off (AIOBPF_PURE_PYTHON=1)"
    try:
        from aiobpf.collector import _speedups  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, f"not built ({exc}): run make provision"
    source = Path(__file__).with_name("_speedups.c")
    built_from = getattr(_speedups, "SOURCE", "")
    if getattr(_speedups, "ABI", None) != ABI or (
            source.is_file() and sha256(source.read_bytes()).hexdigest() != built_from):
        return None, f"built from another source than {source.name}: run make provision"
    return _speedups, ""


_C, NOT_COMPILED = _compiled()
COMPILED = _C is not None
plan_runs = _C.plan_runs if _C is not None else plan_runs_py
known_level = _C.known_level if _C is not None else known_level_py
short_ascii = _C.short_ascii if _C is not None else short_ascii_py
walk_links = _C.walk_links if _C is not None else walk_links_py
stack_level = _C.stack_level if _C is not None else stack_level_py
task_heads = _C.task_heads if _C is not None else task_heads_py
