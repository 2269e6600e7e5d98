"""aiobpf/bpf/abi.py against the header it mirrors (capture.h, read as text here) and
its comparison with bcc's description of a map (what every load runs)."""

from __future__ import annotations

import ctypes as ct
import json
import re
from typing import Any

import pytest

from aiobpf.bpf import abi

KERNEL_ONLY = {"eager_frame", "eager_stack"}   # structures user space never sees
C_TYPES = {"__u8": ct.c_uint8, "__s8": ct.c_int8, "__u32": ct.c_uint32, "__u64": ct.c_uint64}


def _header() -> str:
    return re.sub(r"/\*.*?\*/", " ", abi.HEADER.read_text(), flags=re.S)


def _defines() -> dict[str, int]:
    return {name: int(value) for name, value in
            re.findall(r"^#define (AIOBPF_\w+)\s+(\d+)\s*$", _header(), flags=re.M)}


def _blocks(keyword: str) -> dict[str, str]:
    return dict(re.findall(keyword + r" (\w+) \{(.*?)\};", _header(), flags=re.S))


def _length(expr: str) -> int:
    """An array length: sums of numbers and the header's #defines."""
    defines = _defines()
    return sum(defines[t] if t in defines else int(t) for t in expr.replace(" ", "").split("+"))


def _declared(body: str) -> list[tuple[str, Any]]:
    """(name, ctypes type) of each field of a struct's body, in order."""
    fields = []
    for decl in filter(None, (d.strip() for d in body.split(";"))):
        match = re.fullmatch(r"(struct \w+|\w+)\s+(.*)", decl, flags=re.S)
        assert match, decl
        kind, names = match.groups()
        base = abi.STRUCTS[kind.split()[1]] if kind.startswith("struct") else C_TYPES[kind]
        for name in (n.strip() for n in names.split(",")):
            array = re.fullmatch(r"(\w+)\[(.+)\]", name)
            fields.append((array[1], base * _length(array[2])) if array else (name, base))
    return fields


def _same_type(a: Any, b: Any) -> bool:
    if issubclass(a, ct.Array) and issubclass(b, ct.Array):
        return a._length_ == b._length_ and _same_type(a._type_, b._type_)
    return a is b


def test_constants_are_the_headers_defines() -> None:
    defines = _defines()
    assert set(defines) == {"AIOBPF_MAX_DEPTH", "AIOBPF_MAX_RESUME_OPS", "AIOBPF_HIST_SLOTS",
                            "AIOBPF_EAGER_DEPTH"}
    for name, value in defines.items():
        assert getattr(abi, name.removeprefix("AIOBPF_")) == value, name


def test_enums_are_the_headers() -> None:
    enums = {name: dict(re.findall(r"(\w+)\s*=\s*(\d+)", body))
             for name, body in _blocks("enum").items()}
    assert set(enums) == {"capture_state", "frame_kind"}
    for name, value in enums["capture_state"].items():
        assert getattr(abi, name) == int(value), name
    kinds = {int(v): k.removeprefix("KIND_").lower() for k, v in enums["frame_kind"].items()}
    assert tuple(kinds[i] for i in range(len(kinds))) == abi.FRAME_KINDS


@pytest.mark.parametrize("struct", sorted(abi.STRUCTS))
def test_each_structure_has_the_headers_fields_in_order(struct: str) -> None:
    declared = _declared(_blocks("struct")[struct])
    mirrored = [(name, kind) for name, kind, *_ in abi.STRUCTS[struct]._fields_]
    assert [n for n, _ in mirrored] == [n for n, _ in declared]
    for (name, got), (_, want) in zip(mirrored, declared, strict=True):
        assert _same_type(got, want), f"{struct}.{name}: {got} in abi.py, {want} in capture.h"


def test_every_structure_of_the_header_is_mirrored_or_kernel_only() -> None:
    assert set(_blocks("struct")) == set(abi.STRUCTS) | KERNEL_ONLY


def _bcc_desc(ctype: Any) -> Any:
    """A description of ``ctype`` as bcc gives it (packed, padding spelled out)."""
    names = {ct.c_uint8: "unsigned char", ct.c_int8: "signed char", ct.c_int: "int",
             ct.c_uint32: "unsigned int", ct.c_uint64: "unsigned long long"}
    if not issubclass(ctype, ct.Structure):
        return names[ctype]
    members: list[list[Any]] = []
    at = 0
    for name, kind, *_ in ctype._fields_:
        offset = getattr(ctype, name).offset
        if offset > at:
            members.append([f"__pad_{len(members)}", "char", [offset - at]])
        if issubclass(kind, ct.Array):
            members.append([name, _bcc_desc(kind._type_), [kind._length_]])
        else:
            members.append([name, _bcc_desc(kind)])
        at = offset + ct.sizeof(kind)
    if ct.sizeof(ctype) > at:
        members.append(["__pad_end", "char", [ct.sizeof(ctype) - at]])
    return [ctype.__name__, members, "struct_packed"]


def _described(name: str, key: Any = None, value: Any = None) -> tuple[str, str]:
    real_key, real_value = abi.MAPS[name]
    return (json.dumps(_bcc_desc(key or real_key)), json.dumps(_bcc_desc(value or real_value)))


@pytest.mark.parametrize("name", sorted(abi.MAPS))
def test_a_map_described_as_mirrored_has_no_differences(name: str) -> None:
    assert abi.differences(name, *_described(name)) == []


def test_a_moved_field_is_named() -> None:
    class Moved(ct.Structure):
        _fields_ = [("pid", ct.c_uint32), ("task", ct.c_uint64), ("pad", ct.c_uint32)]

    assert abi.differences("records", *_described("records", key=Moved)) == [
        "records key: 24 bytes compiled, 16 in abi.py"]

    class Swapped(ct.Structure):
        _fields_ = [("pad", ct.c_uint32), ("pid", ct.c_uint32), ("task", ct.c_uint64)]

    assert abi.differences("records", *_described("records", key=Swapped)) == [
        "records key.pad: (offset, size) (0, 4) compiled, (4, 4) in abi.py",
        "records key.pid: (offset, size) (4, 4) compiled, (0, 4) in abi.py"]


def test_a_longer_array_is_named() -> None:
    class Deeper(ct.Structure):
        _fields_ = [(n, (ct.c_uint64 * 65) if n == "step_hist" else t)
                    for n, t, *_ in abi.TargetStats._fields_]

    class Value(ct.Structure):
        _fields_ = [("cfg", abi.TargetConfig), ("stats", Deeper)]

    size = ct.sizeof(abi.TargetValue)
    assert abi.differences("targets", *_described("targets", value=Value)) == [
        f"targets value: {size + 8} bytes compiled, {size} in abi.py"]


def test_an_unreadable_description_is_a_difference() -> None:
    key, _ = _described("threads")
    (found,) = abi.differences("threads", key, '["thread_state", [["pid", "float"]]]')
    assert found.startswith("threads value: bcc's description could not be read")
