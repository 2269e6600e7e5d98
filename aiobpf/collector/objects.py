"""Decode Python objects of a remote process: types, str, int, containers, attributes.

Every decoder is bounded: lengths are checked against sane limits and a bad
pointer raises ``DecodeError`` (or ``ReadFault`` from the memory layer) instead
of looping or allocating without end.  Immutable objects (str, code) are cached
by address for the life of one snapshot.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from aiobpf.collector.layouts import Layout
from aiobpf.collector.linetable import LineTable, decode
from aiobpf.collector.memory import ReadFault, RemoteMemory
from aiobpf.collector.speedups import StrLayout, short_ascii

MAX_STR = 1 << 16          # characters decoded from one str (names, paths)
MAX_SEQ = 1 << 27          # items in one tuple/list
MAX_LOG2_TABLE = 23        # dict/set hash table size (8M slots: sets of 4M tasks)
MAX_TYPE_NAME = 256
MAX_STR_TYPES = 64         # static types named "str" remembered (CPython has one)

_Q = struct.Struct("<Q")
_q = struct.Struct("<q")
_I = struct.Struct("<I")
_CODECS = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}   # str kinds: bytes per character


class DecodeError(Exception):
    """Memory that does not hold what the layout says should be there.

    Like ``ReadFault``, usually a torn read of an object the running target just
    changed; callers retry or mark the result partial.  ``ProcessGone`` and
    ``ReadDenied`` are never caught on the way: they end the snapshot."""


@dataclass(frozen=True, slots=True)
class TypeInfo:
    name: str
    flags: int
    basicsize: int
    dictoffset: int
    base: int
    is_heap: bool


@dataclass(slots=True)
class CodeInfo:
    qualname: str
    filename: str
    firstlineno: int
    linetable_addr: int
    code_start: int          # address of the first code unit
    _table: LineTable | None = None


# Entries kept per cache within one snapshot.  A real process has a few hundred types
# and code objects; a forged one can point a million tasks at distinct "types": past the
# cap a cache starts afresh (only time is lost, never memory).
CACHE_CAP = 1 << 16


def _keep(cache: dict, key: int, value: object) -> None:
    if len(cache) >= CACHE_CAP:
        cache.clear()
    cache[key] = value


def field_reader(fields: Sequence[tuple[int, str]]) -> Callable[..., tuple[Any, ...]]:
    """One call that unpacks ``fields`` ((offset, struct code) pairs, not overlapping)
    from the start of a blob, in the order given: an object decoded in one step.
    ``(buffer, offset)`` decodes the object at that offset of a packed buffer
    (``RemoteMemory.read_packed``)."""
    order = sorted(range(len(fields)), key=lambda i: fields[i][0])
    fmt, pos = "<", 0
    for i in order:
        off, code = fields[i]
        if off < pos:
            raise ValueError(f"fields overlap at offset {off}")
        fmt += f"{off - pos}x{code}"
        pos = off + struct.calcsize(code)
    unpack = struct.Struct(fmt).unpack_from
    if order == list(range(len(fields))):
        return unpack
    back = itemgetter(*[order.index(i) for i in range(len(fields))])
    return lambda blob, at=0: back(unpack(blob, at))


def u64(blob: bytes | bytearray, off: int) -> int:
    return _Q.unpack_from(blob, off)[0]


def i64(blob: bytes, off: int) -> int:
    return _q.unpack_from(blob, off)[0]


class Objects:
    """Object decoders for one target, bound to its memory and layout."""

    def __init__(self, mem: RemoteMemory, layout: Layout) -> None:
        self.mem = mem
        self.layout = layout
        self.consts = layout.consts
        self.version = layout.version[:2]
        L = layout.values
        self.o_type = L["object.type"]
        self.o_size = L["varobject.size"]
        self._types: dict[int, TypeInfo] = {}
        self._kinds: dict[int, str] = {}
        self._type_span = 8 + max(L["type.flags"], L["type.name"], L["type.basicsize"],
                                  L["type.dictoffset"], L["type.base"])
        self._strs: dict[int, str] = {}
        self._codes: dict[int, CodeInfo] = {}
        self.readers: dict[str, Callable[..., tuple[Any, ...]]] = {}   # field_reader()s
        self._u_len = L["unicode.length"]
        self._u_state = L["unicode.state"]
        self._u_kind = L["unicode.kind"] - 8 * L["unicode.state"]
        self._u_compact = L["unicode.compact"] - 8 * L["unicode.state"]
        self._u_ascii = L["unicode.ascii"] - 8 * L["unicode.state"]
        self._u_ascii_size = L["unicode.ascii_size"]
        self._u_compact_size = L["unicode.compact_size"]
        self.str_peek = self._u_compact_size + 48   # bytes of a str that hold a short one
        # The state bits of a compact ASCII str (kind 1): what short_names decodes.
        self._ascii_mask = (7 << self._u_kind) | (1 << self._u_compact) | (1 << self._u_ascii)
        self._ascii_bits = (1 << self._u_kind) | (1 << self._u_compact) | (1 << self._u_ascii)
        self._str_layout = StrLayout(self.o_type, self._u_len, self._u_state, self._ascii_mask,
                                     self._ascii_bits, self._u_ascii_size, self.str_peek)
        self._str_types: set[int] = set()   # types known to be str (one; a forged few)

    def clear(self) -> None:
        """Forget what was read: objects may be freed and their addresses reused."""
        self._codes.clear()
        self._strs.clear()
        self._types.clear()
        self._kinds.clear()
        self._str_types.clear()

    # -- types ------------------------------------------------------------
    def type_of(self, obj: int) -> int:
        return self.mem.ptr(obj + self.o_type)

    def type_info(self, tp: int) -> TypeInfo:
        info = self._types.get(tp)
        if info is None:
            L = self.layout.values
            blob = self.mem.read(tp, self._type_span)
            flags = u64(blob, L["type.flags"])
            name = self.c_string(u64(blob, L["type.name"]), MAX_TYPE_NAME)
            info = TypeInfo(name, flags, i64(blob, L["type.basicsize"]),
                            i64(blob, L["type.dictoffset"]), u64(blob, L["type.base"]),
                            bool(flags & self.consts.tpflags_heaptype))
            _keep(self._types, tp, info)
        return info

    def type_name(self, obj: int) -> str:
        return self.type_info(self.type_of(obj)).name

    def kind(self, obj: int) -> str:
        """The name of ``obj``'s type when that is a built-in (static) type; "" for an
        instance of a class defined in Python (a heap type: its name proves nothing)."""
        return self.type_kind(self.mem.u64(obj + self.o_type))

    def type_kind(self, tp: int) -> str:
        """``kind`` of an instance of the type at ``tp``."""
        kind = self._kinds.get(tp)
        if kind is None:
            info = self.type_info(tp)
            kind = "" if info.is_heap else info.name
            _keep(self._kinds, tp, kind)
            if kind == "str" and len(self._str_types) < MAX_STR_TYPES:
                self._str_types.add(tp)
        return kind

    def is_subtype(self, tp: int, name: str, depth: int = 64) -> bool:
        """True when ``tp`` or one of its bases (tp_base chain) is called ``name``."""
        for _ in range(depth):
            if not tp:
                return False
            info = self.type_info(tp)
            if info.name == name:
                return True
            tp = info.base
        return False

    # -- scalars and strings ------------------------------------------------
    def c_string(self, addr: int, limit: int = 4096) -> str:
        if not addr:
            return ""
        data = b""
        chunk = 64
        while len(data) < limit:
            piece = self.mem.read(addr + len(data), chunk)
            nul = piece.find(b"\0")
            if nul >= 0:
                data += piece[:nul]
                break
            data += piece
            chunk = min(chunk * 2, 1024)
        return data.decode("utf-8", "replace")

    def str_(self, addr: int, limit: int = MAX_STR, head: bytes | bytearray | None = None) -> str:
        """Decode a str object of any kind (ASCII, Latin-1, UCS-2, UCS-4), its first
        ``limit`` characters (then "…").  ``head``: the object's first bytes, read
        already (``str_peek`` of them hold a short name whole)."""
        cached = self._strs.get(addr)
        if cached is not None and (len(cached) <= limit or limit >= MAX_STR):
            return cached
        if head is None or len(head) < self._u_compact_size:
            head = self.mem.read(addr, self._u_compact_size)
        length = _q.unpack_from(head, self._u_len)[0]
        if length < 0:
            raise DecodeError(f"str at {addr:#x} has negative length")
        state = _I.unpack_from(head, self._u_state)[0]
        kind = (state >> self._u_kind) & 7
        compact = (state >> self._u_compact) & 1
        ascii_ = (state >> self._u_ascii) & 1
        if kind not in (1, 2, 4):
            raise DecodeError(f"str at {addr:#x} has kind {kind}")
        n = min(length, limit, MAX_STR)
        if compact and ascii_:
            data_addr = addr + self._u_ascii_size
        elif compact:
            data_addr = addr + self._u_compact_size
        else:
            data_addr = self.mem.ptr(addr + self.layout["unicode.data_any"])
        at = data_addr - addr
        if compact and at + n * kind <= len(head):
            raw = head[at:at + n * kind]
        else:
            raw = self.mem.read(data_addr, n * kind) if n else b""
        text = raw.decode(_CODECS[kind], "replace") + ("…" if n < length else "")
        if n == length or limit >= MAX_STR:
            _keep(self._strs, addr, text)
        return text

    def short_names(self, buf: bytes | bytearray, offsets: Sequence[int]) -> list[str | None]:
        """The text of each str whose first ``str_peek`` bytes are at ``buf[offsets[i]:]``
        when it is an exact str whose ASCII text those bytes hold whole (a short name);
        else None (``str_`` decodes it).  The same text as ``str_``."""
        return short_ascii(buf, offsets, self._str_layout, self._str_types)

    def int_(self, addr: int) -> int:
        L = self.layout.values
        if "long.tag" in L:
            tag = self.mem.u64(addr + L["long.tag"])
            ndigits, sign = tag >> 3, 1 - (tag & 3)
        else:
            size = self.mem.i64(addr + self.o_size)
            ndigits, sign = abs(size), (1 if size > 0 else -1 if size < 0 else 0)
        if ndigits > 64:
            raise DecodeError(f"int at {addr:#x} has {ndigits} digits")
        raw = self.mem.read(addr + L["long.digits"], 4 * ndigits) if ndigits else b""
        value = 0
        for i, digit in enumerate(struct.unpack(f"<{ndigits}I", raw)):
            value |= (digit & ((1 << self.consts.long_shift) - 1)) << (self.consts.long_shift * i)
        return value * sign

    def bytes_(self, addr: int, limit: int = 1 << 20) -> bytes:
        size = self.mem.i64(addr + self.o_size)
        if size < 0 or size > limit:
            raise DecodeError(f"bytes at {addr:#x} has size {size}")
        return self.mem.read(addr + self.layout["bytes.sval"], size) if size else b""

    # -- sequences ----------------------------------------------------------
    def _ptrs(self, addr: int, n: int) -> list[int]:
        if n == 0:
            return []
        return list(struct.unpack(f"<{n}Q", self.mem.read(addr, 8 * n)))

    def _length(self, addr: int) -> int:
        n = self.mem.i64(addr + self.o_size)
        if n < 0 or n > MAX_SEQ:
            raise DecodeError(f"sequence at {addr:#x} claims {n} items")
        return n

    def tuple_items(self, addr: int) -> list[int]:
        return self._ptrs(addr + self.layout["tuple.items"], self._length(addr))

    def list_items(self, addr: int) -> list[int]:
        n = self._length(addr)
        return self._ptrs(self.mem.ptr(addr + self.layout["list.items"]), n) if n else []

    # -- dicts --------------------------------------------------------------
    def _keys_entries(self, keys: int, values: int | None) -> list[tuple[int, int]]:
        L = self.layout.values
        head = self.mem.read(keys, L["dictkeys.indices"])
        log2_size = head[L["dictkeys.log2_size"]]
        log2_index_bytes = head[L["dictkeys.log2_index_bytes"]]
        kind = head[L["dictkeys.kind"]]
        nentries = i64(head, L["dictkeys.nentries"])
        if log2_size > MAX_LOG2_TABLE or not 0 <= nentries <= (1 << log2_size):
            raise DecodeError(f"dict keys at {keys:#x} look corrupt")
        if kind == self.consts.dict_keys_general:
            esize, koff, voff = L["dictentry.size"], L["dictentry.key"], L["dictentry.value"]
        else:
            esize, koff, voff = L["dictuentry.size"], L["dictuentry.key"], L["dictuentry.value"]
        start = keys + L["dictkeys.indices"] + (1 << log2_index_bytes)
        blob = self.mem.read(start, esize * nentries) if nentries else b""
        vals = self._ptrs(values, nentries) if values else None
        out = []
        for i in range(nentries):
            key = u64(blob, i * esize + koff)
            value = vals[i] if vals is not None else u64(blob, i * esize + voff)
            if key and value:
                out.append((key, value))
        return out

    def dict_items(self, addr: int) -> list[tuple[int, int]]:
        L = self.layout.values
        keys = self.mem.ptr(addr + L["dict.keys"])
        values = self.mem.ptr(addr + L["dict.values"])
        return self._keys_entries(keys, values + L["dictvalues.values"] if values else None)

    def dict_get(self, addr: int, name: str) -> int | None:
        for key, value in self.dict_items(addr):
            if self._key_is(key, name):
                return value
        return None

    def _key_is(self, key: int, name: str) -> bool:
        try:
            return self.str_(key) == name
        except DecodeError:
            return False

    def dict_str_items(self, addr: int) -> dict[str, int]:
        out = {}
        for key, value in self.dict_items(addr):
            try:
                out[self.str_(key)] = value
            except DecodeError:
                continue
        return out

    # -- sets ---------------------------------------------------------------
    def set_items(self, addr: int) -> list[int]:
        """Keys of a set.  Entries whose key cannot be read (freed while the set was
        being read) are left out rather than failing the whole set."""
        L = self.layout.values
        off_mask, off_table = L["set.mask"], L["set.table"]
        lo_off = min(off_mask, off_table)
        head = self.mem.read(addr + lo_off, max(off_mask, off_table) + 8 - lo_off)
        mask = i64(head, off_mask - lo_off)
        table = u64(head, off_table - lo_off)
        if mask < 0 or mask + 1 > (1 << MAX_LOG2_TABLE) or (mask + 1) & mask:
            raise DecodeError(f"set at {addr:#x} has mask {mask}")
        esize, koff = L["setentry.size"], L["setentry.key"]
        out = []
        step = 1 << 16
        for lo in range(0, mask + 1, step):
            n = min(step, mask + 1 - lo)
            blob = self.mem.read(table + lo * esize, n * esize)
            for i in range(n):
                key = u64(blob, i * esize + koff)
                if not key:
                    continue
                try:
                    if self.kind(key) != "<dummy key> type":
                        out.append(key)
                except (DecodeError, ReadFault):
                    continue
        return out

    # -- instance attributes ------------------------------------------------
    def attr(self, obj: int, name: str) -> int | None:
        """An attribute stored in the instance's __dict__ (managed or not); None if absent."""
        tp = self.type_of(obj)
        info = self.type_info(tp)
        c = self.consts
        L = self.layout.values
        if info.flags & c.tpflags_managed_dict:
            dorv = self.mem.ptr(obj + c.managed_dict_offset)
            if c.dict_or_values_tagged:
                if dorv & 1:
                    return self._values_get(tp, dorv + 1, name)
                return self.dict_get(dorv, name) if dorv else None
            if dorv:
                return self.dict_get(dorv, name)
            if c.managed_values_offset is not None:
                values = self.mem.ptr(obj + c.managed_values_offset)
                return self._values_get(tp, values, name) if values else None
            if c.inline_values and info.flags & c.tpflags_inline_values:
                values = obj + info.basicsize
                valid = L.get("dictvalues.valid")
                if valid is not None and not self.mem.read(values + valid, 1)[0]:
                    return None
                return self._values_get(tp, values + L["dictvalues.values"], name)
            return None
        if info.dictoffset > 0:
            dict_addr = self.mem.ptr(obj + info.dictoffset)
            return self.dict_get(dict_addr, name) if dict_addr else None
        return None

    def _values_get(self, tp: int, values: int, name: str) -> int | None:
        keys = self.mem.ptr(tp + self.layout["heaptype.cached_keys"])
        if not keys:
            return None
        for key, value in self._keys_entries(keys, values):
            if self._key_is(key, name):
                return value
        return None

    # -- misc objects ---------------------------------------------------------
    def weakref_target(self, ref: int) -> int | None:
        target = self.mem.ptr(ref + self.layout["weakref.object"])
        if not target or self.type_name(target) == "NoneType":
            return None
        return target

    def code(self, addr: int) -> CodeInfo:
        info = self._codes.get(addr)
        if info is None:
            L = self.layout.values
            end = max(L["code.filename"], L["code.qualname"], L["code.linetable"],
                      L["code.firstlineno"]) + 8
            blob = self.mem.read(addr, end)
            info = CodeInfo(
                qualname=self.str_(u64(blob, L["code.qualname"])),
                filename=self.str_(u64(blob, L["code.filename"])),
                firstlineno=struct.unpack_from("<i", blob, L["code.firstlineno"])[0],
                linetable_addr=u64(blob, L["code.linetable"]),
                code_start=addr + L["code.code_adaptive"],
            )
            _keep(self._codes, addr, info)
        return info

    def line_of(self, code: CodeInfo, instr: int) -> int:
        """Line of the instruction at address ``instr`` of ``code``; 0 when unknown."""
        if code._table is None:
            try:
                code._table = decode(self.bytes_(code.linetable_addr), code.firstlineno)
            except (DecodeError, ReadFault):
                code._table = LineTable((), (), 0)
        return code._table.line_at((instr - code.code_start) // 2)
