"""Acceptance: the gh-135371 example under every interpreter, as /home/user/app.py.

aiobpf must show the same tasks, nesting, coroutine frames and awaiters as the
real 3.14 output in tests/reference (stdlib paths and line numbers differ by
version); on 3.14 and 3.15 it must equal the real ``python3.X -m asyncio``
output on the same process, but for the single space after the box characters.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import _started, aiobpf, matrix_params, note_used, require, stop
from tests.pythons import Python

REFERENCE = Path(__file__).resolve().parent.parent / "reference"
APP = "/home/user/app.py"
STDLIB_FRAME = re.compile(r"(\S+) \S*/asyncio/(\w+\.py):\d+")


def _normalise_tree(text: str) -> str:
    text = text.replace("──  ", "── ")
    return STDLIB_FRAME.sub(r"\1 <stdlib>/asyncio/\2:N", text)


def _ps_rows(text: str) -> Counter:
    """Rows without thread and task ids (they differ per run): name, stack, awaiter."""
    rows = Counter()
    for line in text.splitlines()[2:]:
        cells = [line[0:10], line[11:31], line[32:52], line[53:103], line[104:154],
                 line[155:170], line[171:]]
        rows[tuple(c.strip() for c in (cells[2], cells[3], cells[4], cells[5]))] += 1
    return rows


def _start_app(python: Python) -> subprocess.Popen:
    require(python)
    root = python.root or Path("/")
    dest = Path(f"{root}{APP}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REFERENCE / "app.py", dest)
    proc = subprocess.Popen(python.argv(APP), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    _started.append(proc)
    note_used(python)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = aiobpf("ps", str(proc.pid), "--format", "json")
        if result.returncode == 0 and len(result.json()["tasks"]) == 11:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    stop(proc)
    raise AssertionError(f"app.py under {python} never showed its 11 tasks: {result.stderr}")


@pytest.fixture
def app(python: Python):
    proc = _start_app(python)
    try:
        yield proc
    finally:
        stop(proc)
        if python.root is None:
            Path(APP).unlink(missing_ok=True)


@pytest.mark.parametrize("python", matrix_params())
def test_pstree_matches_reference(python: Python, app) -> None:
    result = aiobpf("pstree", str(app.pid))
    assert result.returncode == 0, result.stderr
    expected = (REFERENCE / "app.py.pstree.python3.14.txt").read_text()
    assert _normalise_tree(result.stdout) == _normalise_tree(expected)
    assert "──  " not in result.stdout  # single spaces, as gh-135371's correct output


@pytest.mark.parametrize("python", matrix_params())
def test_ps_matches_reference(python: Python, app) -> None:
    result = aiobpf("ps", str(app.pid))
    assert result.returncode == 0, result.stderr
    expected = (REFERENCE / "app.py.ps.python3.14.txt").read_text()
    assert _ps_rows(result.stdout) == _ps_rows(expected)
    header = expected.splitlines()[:2]
    assert result.stdout.splitlines()[:2] == header
    # Thread ids are the target's main thread; awaiter ids are ids of listed tasks.
    lines = result.stdout.splitlines()[2:]
    ids = {line[11:31].strip(): line[32:52].strip() for line in lines}
    for line in lines:
        assert line[0:10].strip() == str(app.pid)
        awaiter_id, awaiter_name = line[171:].strip(), line[155:170].strip()
        if awaiter_id != "0x0":
            assert ids[awaiter_id] == awaiter_name


@pytest.mark.parametrize("command", ["pstree", "ps"])
@pytest.mark.parametrize("python", matrix_params(min_minor=(3, 14)))
def test_equals_cpython_tool(python: Python, app, command: str, sid_proc) -> None:
    """``python -m asyncio ps/pstree`` exists from 3.14 on: compare with it directly."""
    ours = aiobpf(command, str(app.pid))
    assert ours.returncode == 0, ours.stderr
    for _ in range(3):  # 3.14's reader races with the running target now and then
        theirs = subprocess.run(python.argv("-m", "asyncio", command, str(app.pid)),
                                capture_output=True, text=True, timeout=60)
        if theirs.returncode == 0:
            break
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    assert ours.stdout == theirs.stdout.replace("──  ", "── ")
