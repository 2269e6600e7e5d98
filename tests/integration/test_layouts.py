"""The layouts against the truth: DWARF and the offsets CPython publishes.

- every build whose DWARF can be had (its own, or its separate debug file): the
  layout aiobpf assembles *without* DWARF (generated table + published offsets)
  equals what that DWARF says, field by field;
- every stripped 3.13+ build: ``_Py_DebugOffsets`` (and the ``_asyncio`` module's
  ``AsyncioDebug`` section on 3.14+) agree with the generated table;
- a snapshot read with and without DWARF is the same.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from aiobpf.collector.elf import ElfImage, find_debug_file
from aiobpf.collector.layouts import (
    read_asyncio_debug,
    read_debug_offsets,
    resolve_layout,
    table_for,
)
from aiobpf.collector.layouts.extract import extract
from aiobpf.collector.layouts.spec import ASYNCIO, CORE
from tests.conftest import aiobpf, matrix_params, require, run_target
from tests.pythons import Python

# The sid builds answer where their binaries are from inside their root: /proc there.
pytestmark = pytest.mark.usefixtures("sid_proc")


def _binaries(python: Python) -> tuple[Path, Path | None]:
    """(interpreter binary holding _PyRuntime, _asyncio module or None when built in)."""
    code = ("import sys, sysconfig, _asyncio, os; "
            "libdir = sysconfig.get_config_var('LIBDIR');"
            "shared = sysconfig.get_config_var('Py_ENABLE_SHARED');"
            "lib = os.path.join(libdir, sysconfig.get_config_var('INSTSONAME'));"
            # Debian links the interpreter statically even where sysconfig says shared.
            "print(lib if shared and os.path.exists(lib) and 'libpython' in "
            "open('/proc/self/maps').read() else os.path.realpath(sys.executable));"
            "print(getattr(_asyncio, '__file__', ''))")
    out = subprocess.run(python.argv("-c", code), capture_output=True, text=True, check=True)
    core, asyncio_path = out.stdout.splitlines()
    root = str(python.root) if python.root else ""
    return Path(root + core), (Path(root + asyncio_path) if asyncio_path else None)


def _compare(ours: dict[str, int], truth: dict[str, int], what: str) -> None:
    shared = sorted(k for k in set(ours) & set(truth) if not k.startswith(("dbg:", "adbg:")))
    assert shared, f"nothing in common with {what}"
    diff = {k: (ours[k], truth[k]) for k in shared if ours[k] != truth[k]}
    assert not diff, f"differs from {what}: {diff}"


def _dwarf_truth(path: Path, binaries: set[str], root: Path | None) -> dict[str, int] | None:
    image = ElfImage.open(path)
    if not image.has_debug_info:
        dirs = [Path(f"{root or ''}/usr/lib/debug")]
        image = find_debug_file(image, dirs)
        if image is None:
            return None
    return extract(image.stream, binaries)


@pytest.mark.parametrize("python", matrix_params())
def test_layout_without_dwarf_equals_dwarf(python: Python) -> None:
    """What aiobpf assembles for a stripped build (table + published offsets) is what the
    DWARF of that very build says, wherever the build or its debug file has DWARF."""
    require(python)
    core, asyncio_mod = _binaries(python)
    truth = _dwarf_truth(core, {CORE} if asyncio_mod else {CORE, ASYNCIO}, python.root)
    if asyncio_mod is not None and truth is not None:
        more = _dwarf_truth(asyncio_mod, {ASYNCIO}, python.root)
        truth = None if more is None else {**truth, **more}
    if truth is None:
        message = f"{python.label} has no DWARF and no debug file to check against"
        if python.required:  # provisioning installs the -dbg packages of required builds
            pytest.fail(message + " (scripts/provision.sh installs them)")
        pytest.skip(message)
    version = tuple(int(x) for x in _version(python).split("."))
    layout = resolve_layout(version, ElfImage.open(core),
                            ElfImage.open(asyncio_mod) if asyncio_mod else None, use_dwarf=False)
    _compare(layout.values, truth, f"the DWARF of {python.label}")


@pytest.mark.parametrize("python", matrix_params(min_minor=(3, 13)))
def test_published_offsets_agree_with_table(python: Python) -> None:
    """_Py_DebugOffsets and AsyncioDebug name the same offsets as the generated table."""
    require(python)
    core, asyncio_mod = _binaries(python)
    version = tuple(int(x) for x in _version(python).split("."))
    table = table_for(version)["values"]
    published = read_debug_offsets(ElfImage.open(core), table)
    assert published is not None, f"{core} has no _Py_DebugOffsets"
    values, hexversion, free_threaded = published
    assert hexversion >> 16 == (3 << 8 | python.minor[1])
    assert not free_threaded
    if python.stripped:
        _compare(table, values, "_Py_DebugOffsets")
    if python.minor >= (3, 14):
        adebug = read_asyncio_debug(ElfImage.open(asyncio_mod or core), table)
        assert adebug, "no AsyncioDebug section"
        if python.stripped:
            _compare(table, adebug, "AsyncioDebug")


def _version(python: Python) -> str:
    out = subprocess.run(python.argv("-c", "import platform; print(platform.python_version())"),
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("python", matrix_params())
def test_same_snapshot_without_dwarf(python: Python) -> None:
    with run_target(python, "seed_app.py") as target:
        with_dwarf = aiobpf("ps", str(target.pid), "--format", "json")
        without = aiobpf("ps", str(target.pid), "--format", "json", "--no-dwarf")
        assert with_dwarf.returncode == 0 and without.returncode == 0, without.stderr
        strip = lambda doc: [(t["name"], t["frames"], t["awaited_by"]) for t in doc["tasks"]]  # noqa: E731
        assert strip(with_dwarf.json()) == strip(without.json())
        assert not any(src.startswith("dwarf") for src in without.json()["layout_sources"])
