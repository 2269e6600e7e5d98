"""Suspended coroutine stacks and running thread stacks, from interpreter frames.

A task's internal stack is the chain of objects each suspended frame awaits:
the coroutine's frame awaits the object on top of its value stack (3.11/3.12:
when the next instruction is a RESUME with oparg >= 2; 3.13+: when the frame
state says "suspended in yield from").  The chain is followed through
coroutines, generators (generator-based coroutines, ``__await__`` written as a
generator), async generators (their ``asend``/``athrow`` awaitables and
``anext(agen, default)``) and coroutine wrappers, and stops at the first object that has no frame (a
Future, a custom awaitable): that object is returned as what the task awaits.
"""

from __future__ import annotations

import struct
from array import array
from typing import cast

from aiobpf.collector.memory import ReadFault
from aiobpf.collector.model import Frame, Stacks
from aiobpf.collector.objects import DecodeError, Objects, field_reader, u64
from aiobpf.collector.speedups import FAST_DEPTH, LevelLayout, known_level, stack_level

_Q = struct.Struct("<Q").unpack_from
MAX_AWAIT_DEPTH = 1024     # coroutines awaiting coroutines
FRESH_READS = 3            # re-reads of a coroutine caught between two states
_TORN = -2
MAX_THREAD_FRAMES = 4096   # frames of one thread stack
MAX_SIGNATURES = 1 << 16   # generator signatures remembered (a forged target has many)
MAX_RELEARN_PASSES = 16    # compiled passes over one level's undecided objects, after the first

_FRAME_KINDS = {"coroutine": "coroutine", "generator": "generator",
                "async_generator": "async_generator"}
# Objects without a frame that stand for a generator: the field that holds it.
_WRAPPED = {"async_generator_asend": "asend.gen", "async_generator_athrow": "athrow.gen",
            "coroutine_wrapper": "corowrapper.coroutine",
            "anext_awaitable": "anext.wrapped"}   # anext(agen, default)


class Chain:
    """What a task's coroutine awaits, as far as frames go (one is made per task:
    a plain class, cheaper to make than a dataclass with default factories)."""

    __slots__ = ("awaited", "errors", "frames", "innermost_state", "seen", "unread")

    def __init__(self) -> None:
        self.frames: list[Frame] = []   # outermost first
        self.awaited = 0                # the object the innermost frame waits on (0: none)
        self.innermost_state = ""       # suspended | running | created | finished | unknown
        self.errors: list[str] = []
        self.seen: set[int] = set()     # objects met so far (a chain that loops ends)
        self.unread = False             # an object of it could not be read


class Frames:
    def __init__(self, objs: Objects) -> None:
        self.objs = objs
        self.mem = objs.mem
        L = objs.layout.values
        self.L = L
        c = objs.consts
        self.st_created = L["enum.FRAME_CREATED"]
        self.st_executing = L["enum.FRAME_EXECUTING"]
        self.st_cleared = L["enum.FRAME_CLEARED"]
        self.st_yf = {L[k] for k in ("enum.FRAME_SUSPENDED_YIELD_FROM",
                                     "enum.FRAME_SUSPENDED_YIELD_FROM_LOCKED") if k in L}
        self.st_suspended = {L["enum.FRAME_SUSPENDED"]} | self.st_yf
        self.o_state = L["gen.frame_state"]
        self.o_iframe = L["gen.iframe"]
        self.f_code = L["frame.code"]
        self.f_instr = L["frame.instr_ptr"]
        self.f_prev = L["frame.previous"]
        self.f_owner = L["frame.owner"]
        self.f_locals = L["frame.localsplus"]
        self.f_sp = L.get("frame.stackpointer")
        self.f_stacktop = L.get("frame.stacktop")
        self.frame_span = max(self.f_code, self.f_instr, self.f_prev, self.f_owner,
                              self.f_sp or 0, self.f_stacktop or 0) + 8
        self.ref_clear = ~c.stackref_clear
        self.ref_int_tag = c.stackref_int_tag
        self.resume = c.resume_opcodes
        self.yield_ops = c.yield_opcodes
        self.resume_offset = c.resume_offset
        self.yf_depth = c.yield_from_depth
        self.owned_by_gen = L["enum.FRAME_OWNED_BY_GENERATOR"]
        self._frames: dict[tuple[int, int, str], Frame] = {}
        # A generator's type, frame state, code and instruction pointer tell all that
        # decoding it needs but the object it awaits: the frame of a generator seen
        # awaiting in that state at that instruction is shown for the next at once.
        # Its fields in the order of their offsets: one unpack_from(blob, offset).
        signature = sorted([(L["object.type"], "Q"), (self.o_state, "b"),
                            (self.o_iframe + self.f_code, "Q"),
                            (self.o_iframe + self.f_instr, "Q")])
        self._signature = field_reader(signature)
        self._awaiting_at: dict[tuple[int, ...], Frame] = {}
        # Types whose instances end a chain (no frame, nothing wrapped: a Future, a
        # custom awaitable): one seen once is known for the rest of the snapshot.
        self._ends: set[int] = set()
        self._resume_at: dict[int, int] = {}
        # Bytes read at once from a generator: its header, its interpreter frame and
        # the first slots of the frame's locals and value stack.
        self.gen_span = self.o_iframe + self.frame_span + 128
        self.skip_owners = {L[k] for k in ("enum.FRAME_OWNED_BY_CSTACK",
                                           "enum.FRAME_OWNED_BY_INTERPRETER") if k in L}
        base = self.o_iframe
        self.level_layout = LevelLayout(
            o_type=objs.o_type,
            signature=tuple(v for off, code in signature for v in (off, int(code == "b"))),
            sp_at=base + self.f_sp if self.f_sp is not None else -1,
            stacktop_at=base + self.f_stacktop if self.f_stacktop is not None else -1,
            locals_at=base + self.f_locals, back=8 * self.yf_depth, yf_depth=self.yf_depth,
            span=self.gen_span, tag=self.ref_int_tag if self.ref_int_tag is not None else -1,
            clear=self.ref_clear & 0xFFFF_FFFF_FFFF_FFFF)

    # -- single frames --------------------------------------------------------
    def _object_ref(self, bits: int) -> int:
        """An object pointer from a frame slot (a tagged _PyStackRef on 3.14+)."""
        if self.ref_int_tag is not None and bits & 3 == self.ref_int_tag:
            return 0
        return bits & self.ref_clear

    def frame_at(self, iframe: int, kind: str, blob: bytes | bytearray | None = None,
                 base: int = 0) -> Frame:
        """The Frame of the interpreter frame whose bytes start at ``blob[base:]``."""
        if blob is None:
            blob = self.mem.read(iframe, self.frame_span)
        return self.frame_of(self._object_ref(_Q(blob, base + self.f_code)[0]),
                             _Q(blob, base + self.f_instr)[0], kind)

    def frame_of(self, code: int, instr: int, kind: str) -> Frame:
        """The Frame of a code object and instruction pointer (as BPF records them)."""
        key = (code, instr, kind)
        frame = self._frames.get(key)
        if frame is None:
            info = self.objs.code(code)
            frame = Frame(info.qualname, info.filename, self.objs.line_of(info, instr), kind)
            self._frames[key] = frame
        return frame

    def clear(self) -> None:
        self._frames.clear()
        self._awaiting_at.clear()
        self._ends.clear()
        self._resume_at.clear()

    def _stack_top(self, iframe: int, blob: bytes | bytearray, base: int = 0) -> int:
        """The object ``yield_from_depth`` slots down the value stack of a frame whose
        bytes start at ``blob[base:]`` (the blob starts at ``iframe - base``)."""
        if self.f_sp is not None:
            slot = _Q(blob, base + self.f_sp)[0] - 8 * self.yf_depth
            if slot < iframe + self.f_locals:
                return 0
            at = slot - iframe + base
            bits = _Q(blob, at)[0] if at + 8 <= len(blob) else self.mem.ptr(slot)
            if self.ref_int_tag is not None and bits & 3 == self.ref_int_tag:
                return 0
            return bits & self.ref_clear
        assert self.f_stacktop is not None
        top = struct.unpack_from("<i", blob, base + self.f_stacktop)[0]
        if top < self.yf_depth or top > 1 << 20:
            return 0
        slot = iframe + self.f_locals + 8 * (top - self.yf_depth)
        at = slot - iframe + base
        return _Q(blob, at)[0] if at + 8 <= len(blob) else self.mem.ptr(slot)

    def _resume_oparg(self, blob: bytes | bytearray, base: int) -> int:
        """The oparg of the RESUME a suspended frame will continue at, or -1 when the
        frame is not between a YIELD_VALUE and a RESUME (a torn read)."""
        instr = _Q(blob, base + self.f_instr)[0] + self.resume_offset - 2
        oparg = self._resume_at.get(instr)
        if oparg is None:
            try:
                code = self.mem.read(instr, 4)
            except ReadFault:
                return -1
            ok = code[0] in self.yield_ops and code[2] in self.resume
            # Bytecode is only ever re-specialised between forms of the same
            # instruction, so the answer holds for the whole snapshot.
            oparg = self._resume_at[instr] = code[3] & 3 if ok else -1
        return oparg

    def _state(self, blob: bytes | bytearray, base: int) -> tuple[int, int]:
        """(frame state, RESUME oparg) of a generator; the oparg is _TORN when the
        instruction pointer contradicts the state (a read that mixed two moments):
        a suspended frame must sit between YIELD_VALUE and RESUME, a created one at
        its first instruction (RETURN_GENERATOR, or the one before or after it)."""
        raw = blob[self.o_state]
        state = raw - 256 if raw > 127 else raw
        if state in self.st_suspended:
            oparg = self._resume_oparg(blob, base)
            return state, (oparg if oparg >= 0 else _TORN)
        if state == self.st_created:
            code = self.objs.code(self._object_ref(_Q(blob, base + self.f_code)[0]))
            instr = _Q(blob, base + self.f_instr)[0]
            unit = (instr - code.code_start) // 2
            return state, (0 if -1 <= unit <= 1 else _TORN)
        return state, 0

    def _awaits(self, state: int, oparg: int) -> bool:
        """Whether a suspended frame awaits the object on top of its stack (else it
        yielded a value itself)."""
        return state in self.st_yf if self.st_yf else oparg >= 2

    # -- await chains -----------------------------------------------------------
    # A chain is followed one object at a time: ``_step`` decodes one object from its
    # bytes and says what it awaits.  ``chain`` reads the objects of one chain one after
    # the other; ``chains`` follows many chains side by side, reading the next object of
    # every chain with one system call (a batch of tasks costs a few calls, not a few
    # per task).

    def chain(self, obj: int) -> Chain:
        """Follow what ``obj`` (a task's coroutine) awaits, as far as frames go."""
        return self._follow([obj], strict=True)[0] or Chain()

    def chains(self, objs: list[int]) -> list[Chain | None]:
        """``chain`` of each of ``objs``, read side by side; None for a chain that could
        not be read (an object freed meanwhile: the caller reads it again alone)."""
        return self._follow(objs, strict=False)

    def stacks(self, objs: list[int], stacks: Stacks) -> tuple[array, list[int]]:
        """The chains from ``objs`` (tasks' coroutines) as nodes of ``stacks``, as far as
        what is known already decodes them (``speedups.stack_level``), and the indices
        of the chains left (an object of a kind not met yet, a chain that loops or is
        deeper than FAST_DEPTH): ``chains`` reads those again whole.  Each level of all
        of them is read with one system call, as ``chains`` reads."""
        nodes = array("q", bytes(8 * len(objs)))   # 0: the empty stack
        visited = array("Q", bytes(8 * FAST_DEPTH * len(objs)))
        level, addrs = list(range(len(objs))), objs
        left: list[int] = []
        for depth in range(FAST_DEPTH):
            if not level:
                break
            buf, offsets = self.mem.read_packed(addrs, self.gen_span)
            level, addrs, beyond, slots, stuck = stack_level(
                buf, offsets, addrs, level, nodes, visited, depth, self._awaiting_at, self._ends,
                self.level_layout, stacks)
            left += stuck
            if beyond:   # what a frame with a deep stack awaits: its slots read at once
                words, at = self.mem.read_packed(slots, 8)
                for i, off in zip(beyond, at, strict=True):
                    if off < 0:
                        left.append(i)
                    elif nxt := self._object_ref(_Q(words, off)[0]):
                        level.append(i)
                        addrs.append(nxt)
        return nodes, left + level

    def _follow(self, objs: list[int], strict: bool) -> list[Chain | None]:
        """The chains from ``objs``, one level of all of them read with one system
        call.  A read that fails raises when ``strict``, else its chain is None."""
        outs = [Chain() for _ in objs]
        level = [out for out, obj in zip(outs, objs, strict=True) if obj]
        addrs = [obj for obj in objs if obj]
        for _ in range(MAX_AWAIT_DEPTH):
            if not addrs:
                break
            level, addrs = self._level(level, addrs, strict)
        for out in level:
            out.errors.append(f"await chain deeper than {MAX_AWAIT_DEPTH}")
        return [None if out.unread else out for out in outs]

    def _level(self, outs: list[Chain], objs: list[int], strict: bool
               ) -> tuple[list[Chain], list[int]]:
        """One step of each chain of ``outs`` (at ``objs``): the objects read with one
        system call into one buffer and decoded in place (most of them by
        ``speedups.known_level``, from what earlier objects taught).  Returns the chains
        that go on and the objects they await next."""
        buf, offsets = self.mem.read_packed(objs, self.gen_span)
        going, next_objs, deferred = known_level(buf, offsets, objs, outs, self._awaiting_at,
                                                 self._ends, self.level_layout)
        next_outs = cast(list[Chain], going)
        passes = MAX_RELEARN_PASSES
        at = 0
        while at < len(deferred):
            i = deferred[at]
            at += 1
            known = len(self._awaiting_at) + len(self._ends)
            obj = self._decode(outs[i], objs[i], buf, offsets[i], strict)
            if obj:
                next_outs.append(outs[i])
                next_objs.append(obj)
            if passes and at < len(deferred) and len(self._awaiting_at) + len(self._ends) > known:
                # It taught something new (the first copy of a kind of frame in this
                # level): the compiled loop may now decode the rest of the level.
                passes -= 1
                rest = deferred[at:]
                more, more_objs, still = known_level(
                    buf, [offsets[j] for j in rest], [objs[j] for j in rest],
                    [outs[j] for j in rest], self._awaiting_at, self._ends, self.level_layout)
                next_outs += cast(list[Chain], more)
                next_objs += more_objs
                deferred, at = [rest[k] for k in still], 0
        return next_outs, next_objs

    def _decode(self, out: Chain, obj: int, buf: bytearray, off: int, strict: bool) -> int:
        """One step of ``out`` at ``obj`` (its bytes at ``buf[off:]``, or not read when
        ``off`` < 0); what it awaits next (0: the chain ends here).  A read that fails
        raises when ``strict``, else marks the chain unread."""
        if obj in out.seen:
            out.errors.append("await chain loops")
            return 0
        out.seen.add(obj)
        base, span = self.o_iframe, self.gen_span
        try:
            if off < 0:
                return self._step(obj, self._blob(obj), out)
            blob = buf[off:off + span]
            frame = self._awaiting_at.get(self._signature(blob))
            if frame is None:
                return self._step(obj, blob, out)
            # Seen awaiting before, with what it awaits beyond the bytes read.
            out.frames.append(frame)
            out.innermost_state = "suspended"
            return self._stack_top(obj + base, blob, base)
        except (DecodeError, ReadFault):
            if strict:
                raise
            out.unread = True
            return 0

    def _blob(self, obj: int) -> bytes:
        """The bytes of ``obj`` that ``_step`` decodes: its type, its frame state, its
        embedded interpreter frame and usually the top of its value stack.  A small
        object near the end of a mapping may not have that much memory after it."""
        try:
            return self.mem.read(obj, self.gen_span)
        except ReadFault:
            return self.mem.read(obj, self.objs.o_type + 8)

    def _step(self, obj: int, blob: bytes | bytearray, out: Chain) -> int:
        """Decode ``obj`` from ``blob`` into ``out``; what it awaits next (0: the chain
        ends here)."""
        base = self.o_iframe
        tp = _Q(blob, self.objs.o_type)[0]
        kind = self.objs.type_kind(tp)
        frame_kind = _FRAME_KINDS.get(kind)
        if frame_kind is None:
            if kind not in _WRAPPED and len(self._ends) < MAX_SIGNATURES:
                self._ends.add(tp)
            return self._through(obj, kind, out)
        if len(blob) < self.gen_span:
            blob = self.mem.read(obj, self.gen_span)
        state, oparg = self._state(blob, base)
        for _retry in range(FRESH_READS):
            if oparg != _TORN:
                break
            # Its state and its frame disagree: the page holding part of it was
            # cached before the coroutine moved on.  Read it again as it is now.
            blob = self.mem.read_fresh(obj, self.gen_span)
            state, oparg = self._state(blob, base)
        if oparg == _TORN:
            out.innermost_state = "unknown"
            out.errors.append("a coroutine changed while it was read")
            return 0
        if state >= self.st_cleared or (state > self.st_executing
                                        and state not in self.st_suspended):
            out.innermost_state = "finished"
            return 0
        iframe = obj + base
        out.frames.append(self.frame_at(iframe, frame_kind, blob, base))
        if state == self.st_executing:
            out.innermost_state = "running"
            return 0
        if state == self.st_created:
            out.innermost_state = "created"
            return 0
        out.innermost_state = "suspended"
        if not self._awaits(state, oparg):
            return 0
        if len(self._awaiting_at) >= MAX_SIGNATURES:
            self._awaiting_at.clear()
        self._awaiting_at[self._signature(blob)] = out.frames[-1]
        return self._stack_top(iframe, blob, base)

    def _through(self, obj: int, kind: str, out: Chain) -> int:
        """What an object without a frame leads to: the generator behind an async
        generator's awaitable or a coroutine wrapper; else it is what the chain awaits."""
        field_of = _WRAPPED.get(kind)
        if field_of is None:
            out.awaited = obj
            return 0
        return self.mem.ptr(obj + self.L[field_of])

    def iframe_of(self, gen: int) -> int:
        return gen + self.o_iframe

    # -- thread stacks ----------------------------------------------------------
    def thread_stack(self, frame: int, stop_at: int = 0) -> list[tuple[int, Frame]]:
        """(frame address, Frame) from ``frame`` outwards, innermost first.

        Stops after the frame at ``stop_at`` (e.g. a running task's coroutine)."""
        out: list[tuple[int, Frame]] = []
        seen: set[int] = set()
        while frame and len(out) < MAX_THREAD_FRAMES and frame not in seen:
            seen.add(frame)
            blob = self.mem.read(frame, self.frame_span)
            owner = blob[self.f_owner]
            if owner not in self.skip_owners:
                try:
                    kind = "coroutine" if owner == self.owned_by_gen else "function"
                    out.append((frame, self.frame_at(frame, kind, blob)))
                except DecodeError:
                    pass
            if frame == stop_at:
                break
            frame = u64(blob, self.f_prev)
        return out
