"""Per-version facts that are macros in CPython's headers, so DWARF cannot tell them.

Maintained by hand from each version's headers (``Include/object.h``,
``Include/opcode_ids.h``/``opcode.h``, ``Include/internal/pycore_object.h``,
``pycore_stackref.h``, ``pycore_dict.h``, ``Modules/_collectionsmodule.c``).
Everything that *is* in DWARF lives in the generated ``tables`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Constants:
    # A suspended frame sits between a YIELD_VALUE and the RESUME after it (any of
    # their specialised or instrumented forms).  ``resume_offset`` is where the
    # RESUME is relative to the frame's instruction pointer: 3.11/3.12 keep the
    # last executed instruction (prev_instr), 3.13+ the next one (instr_ptr).
    # A RESUME with oparg & 3 >= 2 follows ``await``/``yield from``: the frame
    # then awaits the object on its stack (3.11/3.12 have no frame state for it).
    yield_opcodes: frozenset[int] = frozenset()
    resume_opcodes: frozenset[int] = frozenset()
    resume_offset: int = 0
    # Stack slot (counted from the top) of the object a frame suspended in
    # ``await`` delegates to: 3.15 keeps a NULL above it (read off 3.15.2 memory).
    yield_from_depth: int = 1
    # _PyStackRef (3.14+): bits to clear to get the object pointer, and the tag of
    # tagged integers (which are not pointers at all).
    stackref_clear: int = 0
    stackref_int_tag: int | None = None
    # Managed instance dictionaries: offsets (in bytes, from the object) of the
    # dict pointer and, for 3.11, of the separate values pointer.
    managed_dict_offset: int = -24
    managed_values_offset: int | None = None   # 3.11: values array pointer
    dict_or_values_tagged: bool = False         # 3.12: low bit set means "values"
    inline_values: bool = False                 # 3.13+: values follow the object
    tpflags_inline_values: int = 1 << 2
    tpflags_managed_dict: int = 1 << 4
    tpflags_heaptype: int = 1 << 9
    tpflags_long_subclass: int = 1 << 24
    tpflags_unicode_subclass: int = 1 << 28
    dict_keys_general: int = 0
    deque_blocklen: int = 64
    long_shift: int = 30


CONSTANTS: dict[tuple[int, int], Constants] = {
    (3, 11): Constants(yield_opcodes=frozenset({86}),
                       resume_opcodes=frozenset({151, 150}),        # RESUME, RESUME_QUICK
                       resume_offset=2, managed_values_offset=-32),
    (3, 12): Constants(yield_opcodes=frozenset({150, 243}),
                       resume_opcodes=frozenset({151, 240}),        # RESUME, INSTRUMENTED_RESUME
                       resume_offset=2, dict_or_values_tagged=True),
    (3, 13): Constants(yield_opcodes=frozenset({118, 241}),
                       resume_opcodes=frozenset({149, 207, 236}),   # + RESUME_CHECK
                       inline_values=True),
    (3, 14): Constants(yield_opcodes=frozenset({120, 247}),
                       resume_opcodes=frozenset({128, 196, 245}),
                       inline_values=True, stackref_clear=1, stackref_int_tag=3),
    (3, 15): Constants(yield_opcodes=frozenset({119, 246}),
                       resume_opcodes=frozenset({128, 200, 201, 244}),  # + RESUME_CHECK_JIT
                       inline_values=True, stackref_clear=1, stackref_int_tag=3,
                       yield_from_depth=2),
}
