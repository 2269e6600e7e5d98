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
from dataclasses import dataclass, field

from aiobpf.collector.memory import ReadFault
from aiobpf.collector.model import Frame
from aiobpf.collector.objects import DecodeError, Objects, u64

_Q = struct.Struct("<Q").unpack_from
MAX_AWAIT_DEPTH = 1024     # coroutines awaiting coroutines
FRESH_READS = 3            # re-reads of a coroutine caught between two states
_TORN = -2
MAX_THREAD_FRAMES = 4096   # frames of one thread stack

_FRAME_KINDS = {"coroutine": "coroutine", "generator": "generator",
                "async_generator": "async_generator"}


@dataclass
class Chain:
    frames: list[Frame] = field(default_factory=list)   # outermost first
    awaited: int = 0            # the object the innermost frame waits on (0: none)
    innermost_state: str = ""   # suspended | running | created | finished
    errors: list[str] = field(default_factory=list)


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
        self._resume_at: dict[int, int] = {}
        # Bytes read at once from a generator: its header, its interpreter frame and
        # the first slots of the frame's locals and value stack.
        self.gen_span = self.o_iframe + self.frame_span + 128
        self.skip_owners = {L[k] for k in ("enum.FRAME_OWNED_BY_CSTACK",
                                           "enum.FRAME_OWNED_BY_INTERPRETER") if k in L}

    # -- single frames --------------------------------------------------------
    def _object_ref(self, bits: int) -> int:
        """An object pointer from a frame slot (a tagged _PyStackRef on 3.14+)."""
        if self.ref_int_tag is not None and bits & 3 == self.ref_int_tag:
            return 0
        return bits & self.ref_clear

    def frame_at(self, iframe: int, kind: str, blob: bytes | None = None, base: int = 0) -> Frame:
        """The Frame of the interpreter frame whose bytes start at ``blob[base:]``."""
        if blob is None:
            blob = self.mem.read(iframe, self.frame_span)
        code_addr = self._object_ref(_Q(blob, base + self.f_code)[0])
        instr = _Q(blob, base + self.f_instr)[0]
        key = (code_addr, instr, kind)
        frame = self._frames.get(key)
        if frame is None:
            code = self.objs.code(code_addr)
            frame = Frame(code.qualname, code.filename, self.objs.line_of(code, instr), kind)
            self._frames[key] = frame
        return frame

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
        self._resume_at.clear()

    def _stack_top(self, iframe: int, blob: bytes, base: int = 0) -> int:
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

    def _resume_oparg(self, blob: bytes, base: int) -> int:
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

    def _state(self, blob: bytes, base: int) -> tuple[int, int]:
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

    def _awaiting(self, state: int, iframe: int, blob: bytes, oparg: int, base: int = 0) -> int:
        """What a suspended frame awaits (0: nothing, it yielded a value itself)."""
        awaits = state in self.st_yf if self.st_yf else oparg >= 2
        return self._stack_top(iframe, blob, base) if awaits else 0

    # -- await chains -----------------------------------------------------------
    def chain(self, obj: int) -> Chain:
        """Follow what ``obj`` (a task's coroutine) awaits, as far as frames go."""
        out = Chain()
        seen: set[int] = set()
        mem = self.mem
        kinds = self.objs._kinds
        o_type, gen_span = self.objs.o_type, self.gen_span
        base = self.o_iframe
        o_state, f_instr, f_code = self.o_state, base + self.f_instr, base + self.f_code
        roff, ref_clear = self.resume_offset - 2, self.ref_clear
        resume_at, frames_cache = self._resume_at, self._frames
        # States in which a frame awaits the object on its stack (3.13+); for 3.11/3.12
        # the RESUME's oparg decides, so the fast path does not apply.
        st_yf_fast = self.st_yf
        for _ in range(MAX_AWAIT_DEPTH):
            if not obj:
                return out
            if obj in seen:
                out.errors.append("await chain loops")
                return out
            seen.add(obj)
            # One read covers the type, the frame state, the embedded interpreter frame
            # and usually the top of its value stack; a small object near the end of a
            # mapping may not have that much memory after it.
            try:
                blob = mem.read(obj, gen_span)
            except ReadFault:
                blob = mem.read(obj, o_type + 8)
            kind = kinds.get(_Q(blob, o_type)[0]) or self.objs.kind(obj)
            frame_kind = _FRAME_KINDS.get(kind)
            if frame_kind is not None:
                if len(blob) < gen_span:
                    blob = mem.read(obj, gen_span)
                # Fast path: a frame suspended in ``await`` at a known resume point.
                raw = blob[o_state]
                state = raw - 256 if raw > 127 else raw
                if state in st_yf_fast:
                    instr = _Q(blob, f_instr)[0]
                    if resume_at.get(instr + roff, -1) >= 0:
                        frame = frames_cache.get((_Q(blob, f_code)[0] & ref_clear, instr,
                                                  frame_kind))
                        if frame is not None:
                            out.frames.append(frame)
                            out.innermost_state = "suspended"
                            obj = self._stack_top(obj + base, blob, base)
                            continue
                state, oparg = self._state(blob, base)
                for _retry in range(FRESH_READS):
                    if oparg != _TORN:
                        break
                    # Its state and its frame disagree: the page holding part of it was
                    # cached before the coroutine moved on.  Read it again as it is now.
                    blob = mem.read_fresh(obj, gen_span)
                    state, oparg = self._state(blob, base)
                if oparg == _TORN:
                    out.innermost_state = "unknown"
                    out.errors.append("a coroutine changed while it was read")
                    return out
                if state >= self.st_cleared or (state > self.st_executing
                                                and state not in self.st_suspended):
                    out.innermost_state = "finished"
                    return out
                iframe = obj + self.o_iframe
                out.frames.append(self.frame_at(iframe, frame_kind, blob, base))
                if state == self.st_executing:
                    out.innermost_state = "running"
                    return out
                if state == self.st_created:
                    out.innermost_state = "created"
                    return out
                out.innermost_state = "suspended"
                obj = self._awaiting(state, iframe, blob, oparg, base)
                continue
            if kind == "async_generator_asend":
                obj = mem.ptr(obj + self.L["asend.gen"])
            elif kind == "async_generator_athrow":
                obj = mem.ptr(obj + self.L["athrow.gen"])
            elif kind == "coroutine_wrapper":
                obj = mem.ptr(obj + self.L["corowrapper.coroutine"])
            elif kind == "anext_awaitable":  # anext(agen, default)
                obj = mem.ptr(obj + self.L["anext.wrapped"])
            else:
                out.awaited = obj
                return out
        out.errors.append(f"await chain deeper than {MAX_AWAIT_DEPTH}")
        return out

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
