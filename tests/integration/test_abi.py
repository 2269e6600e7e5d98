"""The capture programs as compiled against aiobpf/bpf/abi.py: a load compares bcc's
description of every map it reads with abi.py's types, and refuses a drifted one."""

from __future__ import annotations

import ctypes as ct

import pytest

from aiobpf.bpf import abi, program
from aiobpf.bpf.capture import Capture
from aiobpf.bpf.program import CaptureUnavailable

pytestmark = pytest.mark.integration   # compiles and loads the programs (needs root)


def test_the_compiled_maps_are_abis_types() -> None:
    capture = Capture()
    try:
        assert program._drift(capture.bpf, capture._lib) == []
        for name, (key, value) in abi.MAPS.items():
            table = capture.tables[name]
            assert (table.Key, table.Leaf) == (key, value)
    finally:
        capture.close()


def test_a_load_refuses_maps_that_differ_from_abi(monkeypatch: pytest.MonkeyPatch) -> None:
    class Shallower(ct.Structure):   # a record of 16 frames where capture.h has 32
        _fields_ = [(n, (abi.FrameRef * 16) if n == "frames" else t)
                    for n, t, *_ in abi.TaskRecord._fields_]

    monkeypatch.setitem(abi.MAPS, "records", (abi.TaskKey, Shallower))
    with pytest.raises(CaptureUnavailable) as failure:
        Capture().close()
    assert failure.value.kind == "bpf_load"
    assert str(failure.value).startswith(
        "the BPF maps as compiled differ from aiobpf/bpf/abi.py (capture.h changed without "
        f"it): records value: {ct.sizeof(abi.TaskRecord)} bytes compiled, "
        f"{ct.sizeof(Shallower)} in abi.py")
