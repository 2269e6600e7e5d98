"""Where to put the uprobes: the functions that start an asyncio task step.

A task steps when ``task_wakeup`` runs (a future it awaited is done) or when
``TaskStepMethWrapper``'s call function runs (a step scheduled with
``call_soon``); both take the task (or the wrapper holding it) as first
argument.  On 3.12+ a task may also start eagerly: ``Task.__init__`` (the Task
type's ``tp_init``, ``_asyncio_Task___init__``) then runs its first step itself,
inside whatever called it (``task_eager_start``); every task, eager or not, is
created there, so an entry and a return probe on it count creations and bracket
eager first steps.  All are static functions, so stripped builds have no symbol
for them.  They are found, in this order:

1. ``.symtab`` of the module (or of the interpreter, when asyncio is built in);
2. a separate debug file (by build-id or ``.gnu_debuglink``);
3. the module's own tables: the ``PyMethodDef`` named "task_wakeup" holds
   ``task_wakeup``'s address, ``TaskStepMethWrapper``'s type (its
   ``PyType_Spec`` slots on 3.12+, its static type object on 3.11) holds the
   call function, and the Task type's ``PyType_Spec`` slots (3.12+) its init.
   In a position-independent file those pointers are ``R_X86_64_RELATIVE``
   relocation addends; in a non-PIE executable, plain values.

Distribution builds start functions with ``endbr64``, which the kernel must
single-step; the probe goes on the instruction after it (usually a ``push``,
which the kernel emulates at a fraction of the cost).

The file may be hostile: the searches below are bounded (``MAX_HITS`` matches
of any one search) and check the examination's deadline.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from aiobpf.collector import deadline
from aiobpf.collector.elf import ElfImage

TASK_WAKEUP = "task_wakeup"
STEP_WRAPPER_CALL = "TaskStepMethWrapper_call"
STEP_FUNCTIONS = (TASK_WAKEUP, STEP_WRAPPER_CALL)
TASK_INIT = "_asyncio_Task___init__"   # 3.12+: creations and eager first steps

METH_O = 0x0008
PY_TP_CALL = 50            # Include/typeslots.h
PY_TP_INIT = 60
R_X86_64_RELATIVE = 8
ENDBR64 = b"\xf3\x0f\x1e\xfa"
_U64 = struct.Struct("<Q")
_RELA = struct.Struct("<QQq")
MAX_HITS = 64               # matches of one string or pointer search that are looked at


@dataclass(frozen=True)
class ProbeSite:
    function: str
    entry: int           # link-time address of the function
    address: int         # link-time address of the probed instruction
    file_offset: int     # where that instruction is in the file (what uprobes take)
    instruction: str     # "push" (emulated), "endbr64" or "other" (single-stepped)
    found_by: str        # symtab | debug file | method table | type spec | type object


def _classify(code: bytes) -> str:
    if code.startswith(ENDBR64):
        return "endbr64"
    if code and (0x50 <= code[0] <= 0x57 or (code[0] == 0x41 and len(code) > 1
                                             and 0x50 <= code[1] <= 0x57)):
        return "push"
    return "other"


class _Tables:
    """Pointers stored in an ELF file's data, as the dynamic loader will set them."""

    def __init__(self, image: ElfImage) -> None:
        self.image = image

    @cached_property
    def relative(self) -> dict[int, int]:
        """r_offset -> addend of every R_X86_64_RELATIVE relocation (PIC files)."""
        out: dict[int, int] = {}
        for name in (".rela.dyn",):
            data = self.image.section_data(name)
            if not data:
                continue
            usable = len(data) - len(data) % _RELA.size
            for i, (offset, info, addend) in enumerate(_RELA.iter_unpack(data[:usable])):
                if not i & 0xFFFF:
                    deadline.check()
                if info & 0xFFFFFFFF == R_X86_64_RELATIVE:
                    out[offset] = addend
        return out

    @cached_property
    def by_target(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for offset, addend in self.relative.items():
            out.setdefault(addend, []).append(offset)
        return out

    def pointer_at(self, vaddr: int) -> int:
        if self.image.is_pie:
            return self.relative.get(vaddr, 0)
        data = self.image.read_vaddr(vaddr, 8)
        return _U64.unpack(data)[0] if len(data) == 8 else 0

    def int_at(self, vaddr: int) -> int | None:
        data = self.image.read_vaddr(vaddr, 4)
        return struct.unpack("<i", data)[0] if len(data) == 4 else None

    def referrers(self, target: int) -> list[int]:
        """Addresses of pointers to ``target``."""
        if self.image.is_pie:
            return self.by_target.get(target, [])[:MAX_HITS]
        needle = _U64.pack(target & 0xFFFF_FFFF_FFFF_FFFF)
        out: list[int] = []
        for name in (".data", ".data.rel.ro"):
            sec = self.image.sections.get(name)
            data = self.image.section_data(name) if sec else None
            if not data or sec is None:
                continue
            pos = data.find(needle)
            while pos >= 0 and len(out) < MAX_HITS:
                deadline.check()
                if pos % 8 == 0:
                    out.append(sec.addr + pos)
                pos = data.find(needle, pos + 1)
        return out

    def strings(self, text: str) -> Iterator[int]:
        """Addresses of the NUL-terminated ``text`` (possibly the tail of a longer string)."""
        needle = text.encode() + b"\0"
        for name in (".rodata",):
            sec = self.image.sections.get(name)
            data = self.image.section_data(name) if sec else None
            if not data or sec is None:
                continue
            pos = data.find(needle)
            for _ in range(MAX_HITS):
                if pos < 0:
                    break
                deadline.check()
                yield sec.addr + pos
                pos = data.find(needle, pos + 1)


def _from_method_table(tables: _Tables) -> int | None:
    for name_addr in tables.strings(TASK_WAKEUP):
        for ml_name in tables.referrers(name_addr):
            meth = tables.pointer_at(ml_name + 8)
            flags = tables.int_at(ml_name + 16)
            if meth and flags is not None and flags & METH_O:
                return meth
    return None


def _from_spec(tables: _Tables, ref: int, wanted_slot: int) -> int | None:
    """The function of slot ``wanted_slot`` in the ``PyType_Spec`` whose name pointer is at
    ``ref`` (3.12+: {name, basicsize, itemsize, flags, slots})."""
    slots = tables.pointer_at(ref + 24)
    for i in range(64):
        if not slots:
            break
        slot = tables.int_at(slots + 16 * i)
        if not slot:
            break
        if slot == wanted_slot:
            return tables.pointer_at(slots + 16 * i + 8) or None
    return None


def _from_type(tables: _Tables, type_call_offset: int) -> tuple[int, str] | None:
    names = list(tables.strings("_asyncio.TaskStepMethWrapper"))
    names += [a for a in tables.strings("TaskStepMethWrapper") if a not in names]
    for name_addr in names:
        for ref in tables.referrers(name_addr):
            func = _from_spec(tables, ref, PY_TP_CALL)
            if func:
                return func, "type spec"
            # 3.11: a static PyTypeObject whose tp_name is this string
            func = tables.pointer_at(ref - 24 + type_call_offset)
            if func:
                return func, "type object"
    return None


def _task_init_from_spec(tables: _Tables) -> int | None:
    """Task's tp_init, from the slots of the spec named exactly "_asyncio.Task" (3.12+)."""
    for name_addr in tables.strings("_asyncio.Task"):
        if tables.image.read_vaddr(name_addr - 1, 1) not in (b"\0", b""):
            continue   # the tail of a longer string ("..._asyncio.Task")
        for ref in tables.referrers(name_addr):
            func = _from_spec(tables, ref, PY_TP_INIT)
            if func:
                return func
    return None


def _site(image: ElfImage, function: str, entry: int, found_by: str) -> ProbeSite | None:
    code = image.read_vaddr(entry, 8)
    if not code:
        return None
    address = entry + 4 if code.startswith(ENDBR64) else entry
    code = code[address - entry:]
    offset = image.file_offset(address)
    if offset is None:
        return None
    return ProbeSite(function, entry, address, offset, _classify(code), found_by)


def find_step_sites(image: ElfImage, debug: ElfImage | None, type_call_offset: int,
                    task_init: bool = False) -> tuple[dict[str, ProbeSite], list[str]]:
    """Probe sites of the step functions in ``image`` (the file holding _asyncio), and
    for each function not found, why.  ``task_init`` (3.12+): Task's init too."""
    functions = (*STEP_FUNCTIONS, TASK_INIT) if task_init else STEP_FUNCTIONS
    wanted = set(functions)
    found: dict[str, tuple[int, str]] = {}
    for name, addr in image.symbols(wanted, tables=(".symtab",)).items():
        found[name] = (addr, "symtab")
    if debug is not None and len(found) < len(wanted):
        for name, addr in debug.symbols(wanted - found.keys(), tables=(".symtab",)).items():
            found[name] = (addr, "debug file")
    tables = _Tables(image)
    if TASK_WAKEUP not in found:
        wakeup = _from_method_table(tables)
        if wakeup:
            found[TASK_WAKEUP] = (wakeup, "method table")
    if STEP_WRAPPER_CALL not in found:
        hit = _from_type(tables, type_call_offset)
        if hit:
            found[STEP_WRAPPER_CALL] = hit
    if task_init and TASK_INIT not in found:
        init = _task_init_from_spec(tables)
        if init:
            found[TASK_INIT] = (init, "type spec")
    sites: dict[str, ProbeSite] = {}
    notes: list[str] = []
    for name in functions:
        if name not in found:
            notes.append(f"{name} not found in {image.name} (no symbol, debug file or table)")
            continue
        site = _site(image, name, *found[name])
        if site is None:
            notes.append(f"{name} at {found[name][0]:#x} is not in a loaded segment")
        else:
            sites[name] = site
    return sites, notes
