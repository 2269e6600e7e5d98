"""capture.h for Python: the constants and structures the BPF programs share with
user space, as ctypes, and the comparison of those with the program as compiled.

capture.h is the source; this module mirrors it field for field, and two checks
keep them in step: tests/unit/test_abi.py reads capture.h and compares it with
this module, and every load compares these types with bcc's description of the
maps it created (``differences``): maps whose layout is not the one compiled are
never read.
"""

from __future__ import annotations

import ctypes as ct
import json
from pathlib import Path
from typing import Any

HEADER = Path(__file__).with_name("capture.h")

# The #defines of capture.h (AIOBPF_<name>).
MAX_DEPTH = 32          # coroutine frames captured per task
MAX_RESUME_OPS = 4      # RESUME opcode variants (3.11/3.12 chain test)
HIST_SLOTS = 64         # log2 slots of the time histograms
EAGER_DEPTH = 4         # eager starts nested in one another, bracketed per thread

# enum capture_state: what a record's step left
CAPTURE_SUSPENDED, CAPTURE_FINISHED, CAPTURE_RUNNING, CAPTURE_CREATED = 1, 2, 3, 4
# enum frame_kind, by value
FRAME_KINDS = ("coroutine", "generator", "async_generator")


class TargetConfig(ct.Structure):
    """struct target_config: everything version-specific the programs need."""

    _fields_ = [
        ("ob_type", ct.c_uint32),
        ("task_coro", ct.c_uint32), ("task_name", ct.c_uint32),
        ("task_fut_waiter", ct.c_uint32), ("task_awaited_by", ct.c_uint32),
        ("task_awaited_by_is_set", ct.c_uint32), ("task_state", ct.c_uint32),
        ("wrapper_task", ct.c_uint32),
        ("gen_frame_state", ct.c_uint32), ("gen_iframe", ct.c_uint32),
        ("frame_code", ct.c_uint32), ("frame_instr", ct.c_uint32), ("frame_stack", ct.c_uint32),
        ("frame_localsplus", ct.c_uint32), ("gen_span", ct.c_uint32), ("task_span", ct.c_uint32),
        ("gen_min_span", ct.c_uint32),
        ("st_created", ct.c_int8), ("st_executing", ct.c_int8), ("st_suspended", ct.c_int8),
        ("st_yf", ct.c_int8), ("st_yf_locked", ct.c_int8), ("st_cleared", ct.c_int8),
        ("stack_is_pointer", ct.c_uint8), ("yf_by_oparg", ct.c_uint8), ("yf_depth", ct.c_uint8),
        ("resume_offset", ct.c_uint8), ("pad0", ct.c_uint8 * 2),
        ("resume_ops", ct.c_uint8 * MAX_RESUME_OPS),
        ("ref_clear", ct.c_uint64), ("int_tag", ct.c_uint64),
        ("coro_type", ct.c_uint64), ("gen_type", ct.c_uint64), ("asyncgen_type", ct.c_uint64),
        ("pending_state", ct.c_uint64), ("slot", ct.c_uint32), ("pad1", ct.c_uint32),
    ]


class TargetSettings(ct.Structure):
    """struct target_settings: what user space changes while a process is traced."""

    _fields_ = [("epoch_ns", ct.c_uint64), ("trace", ct.c_uint8), ("pad", ct.c_uint8 * 7)]


class FrameRef(ct.Structure):
    """struct frame_ref: a captured frame (code object, instruction pointer)."""

    _fields_ = [("code", ct.c_uint64), ("instr", ct.c_uint64)]


class TaskRecord(ct.Structure):
    """struct task_record: one task as the step that just ended left it."""

    _fields_ = [
        ("task", ct.c_uint64), ("coro", ct.c_uint64), ("name", ct.c_uint64),
        ("fut_waiter", ct.c_uint64), ("awaited_by", ct.c_uint64), ("awaited", ct.c_uint64),
        ("taken_ns", ct.c_uint64), ("step_start_ns", ct.c_uint64),
        ("wake_delay_ns", ct.c_uint64), ("steps", ct.c_uint64), ("step_ns", ct.c_uint64),
        ("nested_ns", ct.c_uint64), ("max_step_ns", ct.c_uint64),
        ("pid", ct.c_uint32), ("tid", ct.c_uint32), ("depth", ct.c_uint32),
        ("state", ct.c_uint8), ("awaited_by_is_set", ct.c_uint8), ("truncated", ct.c_uint8),
        ("eager", ct.c_uint8), ("signature", ct.c_uint64),
        ("frames", FrameRef * MAX_DEPTH),
        ("kinds", ct.c_uint8 * MAX_DEPTH),
    ]


class TargetStats(ct.Structure):
    """struct target_stats: what the programs count for one process."""

    _fields_ = [
        ("steps", ct.c_uint64), ("captures", ct.c_uint64),
        ("read_errors", ct.c_uint64), ("events_lost", ct.c_uint64),
        ("finished", ct.c_uint64), ("step_ns_sum", ct.c_uint64), ("delay_ns_sum", ct.c_uint64),
        ("prog_ns_sum", ct.c_uint64), ("records_dropped", ct.c_uint64),
        ("created", ct.c_uint64), ("eager_steps", ct.c_uint64),
        ("step_hist", ct.c_uint64 * HIST_SLOTS), ("delay_hist", ct.c_uint64 * HIST_SLOTS),
        ("depth_hist", ct.c_uint64 * (MAX_DEPTH + 1)), ("wrapper_steps", ct.c_uint64),
    ]


class TargetValue(ct.Structure):
    """struct target: settings from user space, then the programs' counts."""

    _fields_ = [("cfg", TargetConfig), ("stats", TargetStats)]


class TaskKey(ct.Structure):
    """struct task_key: the key of the records map."""

    _fields_ = [("pid", ct.c_uint32), ("pad", ct.c_uint32), ("task", ct.c_uint64)]


class ThreadState(ct.Structure):
    """struct thread_state: the task stepping on a thread, and when its loop woke."""

    _fields_ = [("task", ct.c_uint64), ("start_ns", ct.c_uint64), ("woke_ns", ct.c_uint64),
                ("delay_ns", ct.c_uint64), ("nested_ns", ct.c_uint64), ("pid", ct.c_uint32),
                ("pad", ct.c_uint32)]


# The structures of capture.h that user space reads or writes, by their C names (the
# header's others, eager_frame and eager_stack, stay in the kernel).
STRUCTS: dict[str, type[ct.Structure]] = {
    "target_config": TargetConfig, "frame_ref": FrameRef, "task_record": TaskRecord,
    "target_stats": TargetStats, "target": TargetValue, "task_key": TaskKey,
    "thread_state": ThreadState, "target_settings": TargetSettings,
}
# The maps user space reads, with the ctypes of their keys and values (given to bcc,
# which cannot decode int8 fields itself).
MAPS: dict[str, tuple[Any, Any]] = {
    "targets": (ct.c_uint32, TargetValue),
    "records": (TaskKey, TaskRecord),
    "threads": (ct.c_uint32, ThreadState),
    "settings": (ct.c_int, TargetSettings),
}

# -- the comparison with bcc's description of a map --------------------------------
# bcc describes a map's key and value as clang laid them out: JSON, a packed struct
# with its padding spelled out as fields, e.g. ["task_key", [["pid", "unsigned int"],
# ...], "struct_packed"], arrays as [name, type, [length]].
_C_SIZES = {"char": 1, "signed char": 1, "unsigned char": 1, "_Bool": 1, "short": 2,
            "unsigned short": 2, "int": 4, "unsigned int": 4, "long": 8, "unsigned long": 8,
            "long long": 8, "unsigned long long": 8}
Fields = dict[str, tuple[int, int]]   # "path.of.field" -> (offset, size)


def _described(desc: Any, path: str, at: int, out: Fields) -> int:
    """Add the fields of bcc's ``desc`` (at offset ``at``) to ``out``; its size."""
    if isinstance(desc, str):
        out[path] = (at, _C_SIZES[desc])
        return _C_SIZES[desc]
    _name, members, *_kind = desc
    size = 0
    for member in members:
        name, kind, *length = member
        count = length[0][0] if length else 1
        where = f"{path}.{name}" if path else name
        if name.startswith("__pad"):
            size += _described(kind, "", 0, {}) * count
            continue
        one = _described(kind, where + ("[0]" if length else ""), at + size, out)
        if length:
            out[where] = (at + size, one * count)
        size += one * count
    return size


def _mirrored(ctype: Any, path: str, at: int, out: Fields) -> None:
    """Add the fields of the ctypes type ``ctype`` (at offset ``at``) to ``out``."""
    if issubclass(ctype, ct.Structure):
        for name, kind, *_ in ctype._fields_:
            _mirrored(kind, f"{path}.{name}" if path else name,
                      at + getattr(ctype, name).offset, out)
    elif issubclass(ctype, ct.Array):
        out[path] = (at, ct.sizeof(ctype))
        _mirrored(ctype._type_, path + "[0]", at, out)
    else:
        out[path] = (at, ct.sizeof(ctype))


def _compare(what: str, desc: str, ctype: Any) -> list[str]:
    try:
        compiled: Fields = {}
        size = _described(json.loads(desc), "", 0, compiled)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return [f"{what}: bcc's description could not be read ({exc!r}): {desc[:200]}"]
    mirrored: Fields = {}
    _mirrored(ctype, "", 0, mirrored)
    if size != ct.sizeof(ctype):
        return [f"{what}: {size} bytes compiled, {ct.sizeof(ctype)} in abi.py"]
    out = []
    for path in sorted(compiled.keys() | mirrored.keys()):
        got, want = compiled.get(path), mirrored.get(path)
        if got != want:
            out.append(f"{what}.{path or '(value)'}: (offset, size) {got or 'absent'} "
                       f"compiled, {want or 'absent'} in abi.py")
    return out


def differences(name: str, key_desc: str, leaf_desc: str) -> list[str]:
    """Where the map ``name`` as compiled (bcc's JSON descriptions of its key and
    value) differs from its types here; [] when they agree."""
    key, value = MAPS[name]
    return (_compare(f"{name} key", key_desc, key)
            + _compare(f"{name} value", leaf_desc, value))
