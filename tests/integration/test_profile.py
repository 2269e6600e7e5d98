"""aiobpf profile against real targets: the gh-135371 example on every interpreter,
side by side with CPython 3.15's own sampler (the files read by their tools:
test_profile_formats.py)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import NO_DAEMON_SOCKET, SID_ROOT, aiobpf, matrix_params, run_target
from tests.pythons import Python, by_label

# The example's leaf tasks: six foo2 under the three foo1.N (two each), one foo2 under
# Task-1 directly; every stack as (task or frame name) root first.
COMMON = ["[task] Task-1", "runner", "sleep"]
FOO1 = ["foo1", "foo11", "foo12", "[task] foo2", "foo2", "sleep"]
EXPECTED = {(*COMMON, f"[task] foo1.{i}", *FOO1): 2 for i in range(3)} | {
    (*COMMON, "[task] foo2", "foo2", "sleep"): 1}


def _ours(text: str) -> Counter[tuple[str, ...]]:
    """Collapsed lines as (names) -> count; a frame ``qualname (file:line)`` by its name."""
    out: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        stack, count = line.rsplit(" ", 1)
        out[tuple(part if part.startswith("[task] ") else part.rsplit(" (", 1)[0]
                  for part in stack.split(";"))] += int(count)
    return out


def _samples(stderr: str) -> int:
    found = re.search(r"aiobpf: (\d+) samples in", stderr)
    assert found, stderr
    return int(found.group(1))


@pytest.mark.parametrize("python", matrix_params())
def test_wall_mode_counts_each_leaf_task_once_per_sample(python: Python) -> None:
    with run_target(python, "seed_app.py") as target:
        result = aiobpf("profile", str(target.pid), "--mode", "wall", "--duration", "1",
                        "--rate", "20")
    assert result.returncode == 0, result.stderr
    samples = _samples(result.stderr)
    assert samples >= 10
    assert _ours(result.stdout) == {stack: n * samples for stack, n in EXPECTED.items()}


def _theirs(text: str) -> Counter[tuple[str, ...]]:
    """3.15's collapsed lines (``tid:N;<task>:name:0;file.py:func:line;...``) the same way."""
    out: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        stack, count = line.rsplit(" ", 1)
        parts = stack.split(";")[1:]   # without the thread
        out[tuple(f"[task] {p.split(':', 1)[1].rsplit(':', 1)[0]}" if p.startswith("<task>:")
                  else p.split(":")[1] for p in parts)] += int(count)
    return out


def _shares(stacks: Counter[tuple[str, ...]]) -> dict[tuple[str, ...], float]:
    total = sum(stacks.values())
    return {stack: count / total for stack, count in stacks.items()}


def test_the_same_stacks_and_shares_as_cpython_3_15s_sampler(sid_proc: None) -> None:
    """Same process, same run: ``python3.15 -m profiling.sampling attach --async-aware
    --async-mode all`` and aiobpf's wall mode find the same async stacks, with the same
    shares of the samples."""
    python = by_label("sid-3.15")
    out = Path("/tmp/aiobpf-profile-315.txt")
    with run_target(python, "seed_app.py") as target:
        ours = aiobpf("profile", str(target.pid), "--mode", "wall", "--duration", "1")
        theirs = subprocess.run(python.argv(
            "-m", "profiling.sampling", "attach", "--async-aware", "--async-mode", "all",
            "-d", "1", "--collapsed", "-o", str(out), str(target.pid)),
            capture_output=True, text=True, timeout=60)
    written = SID_ROOT / out.relative_to("/")
    try:
        assert theirs.returncode == 0, theirs.stdout + theirs.stderr
        assert ours.returncode == 0, ours.stderr
        mine, cpython = _shares(_ours(ours.stdout)), _shares(_theirs(written.read_text()))
    finally:
        written.unlink(missing_ok=True)
    assert set(mine) == set(cpython) == set(EXPECTED)
    for stack, share in mine.items():
        assert share == pytest.approx(cpython[stack], abs=0.01), stack


def test_errors_are_one_line_with_their_fix() -> None:
    gone = aiobpf("profile", "4999999", "--duration", "0.2")
    nobody = aiobpf("profile", "1", "--duration", "0.2", user="nobody")
    assert nobody.returncode == 77, nobody.stderr
    assert gone.returncode == 1 and "no process with PID 4999999" in gone.stderr
    bad = aiobpf("profile", "1", "--rate", "0")
    assert bad.returncode == 2 and "must be a positive number" in bad.stderr
    for result in (gone, bad, nobody):
        assert "Traceback" not in result.stderr


# -- cpu mode -------------------------------------------------------------------------------
A_CHAIN = ("[task] parent", "parent", "[task] A", "a_middle_outer", "a_middle", "a_loop",
           "outer_work", "inner_work", "spin")
B_CHAIN = ("[task] B", "b_loop", "spin")


@pytest.mark.parametrize("python", matrix_params())
def test_cpu_mode_attributes_a_known_split_under_each_task(python: Python) -> None:
    """cpu_split.py: task A (awaited by "parent" through two coroutines) spins in a
    nested function 3 slices out of every 4, task B 1: the samples split 75/25 within
    5 points, and A's samples read parent, A's coroutines, then the synchronous frames."""
    with run_target(python, "cpu_split.py") as target:
        result = aiobpf("profile", str(target.pid), "--duration", "3", "--rate", "199")
    assert result.returncode == 0, result.stderr
    stacks = _ours(result.stdout)
    total = sum(stacks.values())
    assert total >= 200, result.stderr   # ~600 expected; fewer only on a starved machine
    a = sum(n for stack, n in stacks.items() if stack[-len(A_CHAIN):] == A_CHAIN)
    b = sum(n for stack, n in stacks.items() if stack[-len(B_CHAIN):] == B_CHAIN)
    assert a / total == pytest.approx(0.75, abs=0.05), stacks
    assert b / total == pytest.approx(0.25, abs=0.05), stacks


def _top_two(stacks: Counter[tuple[str, ...]]) -> list[tuple[tuple[str, ...], float]]:
    total = sum(stacks.values())
    return [(stack, n / total) for stack, n in stacks.most_common(2)]


def test_cpu_mode_agrees_with_cpython_3_15s_sampler_on_the_running_task(sid_proc: None
                                                                        ) -> None:
    """Same process, same run: ``python3.15 -m profiling.sampling attach --async-aware``
    (``--async-mode running``, sampling wall time at 1 kHz) and aiobpf's cpu mode find the
    same two top stacks, with shares within 5 points."""
    python = by_label("sid-3.15")
    out = Path("/tmp/aiobpf-profile-315-running.txt")
    written = SID_ROOT / out.relative_to("/")
    with run_target(python, "cpu_split.py") as target:
        theirs = subprocess.Popen(python.argv(
            "-m", "profiling.sampling", "attach", "--async-aware", "--async-mode", "running",
            "-d", "3", "--collapsed", "-o", str(out), str(target.pid)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            ours = aiobpf("profile", str(target.pid), "--duration", "3", "--rate", "199")
            said, _ = theirs.communicate(timeout=60)
        finally:
            if theirs.poll() is None:
                theirs.kill()
                theirs.wait()
    try:
        assert theirs.returncode == 0, said
        assert ours.returncode == 0, ours.stderr
        cpython = _top_two(_theirs(written.read_text()))
    finally:
        written.unlink(missing_ok=True)
    mine = _top_two(_ours(ours.stdout))
    assert [stack for stack, _ in mine] == [stack for stack, _ in cpython]
    assert mine[0][0][-len(A_CHAIN):] == A_CHAIN
    for (_, share), (_, their_share) in zip(mine, cpython, strict=True):
        assert share == pytest.approx(their_share, abs=0.05), (mine, cpython)


def _py_spy_stacks(text: str) -> Counter[tuple[tuple[str, int], ...]]:
    """py-spy's raw (collapsed) lines as ((name, line), ...) -> count (line 0 where
    py-spy gives none: with --nonblocking it may read a frame half-written)."""
    out: Counter[tuple[tuple[str, int], ...]] = Counter()
    for line in text.splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = []
        for part in stack.split(";"):
            name, _, where = part.rpartition(" (") if " (" in part else (part, "", "")
            number = where.rstrip(")").rpartition(":")[2]
            frames.append((name, int(number) if number.isdigit() else 0))
        out[tuple(frames)] += int(count)
    return out


def _frame_key(part: str) -> str:
    """One frame of our collapsed line as ``name:line``; tasks (``[task] name``) and
    frames without a file (``<frame not readable>``, a frame caught half-written) as
    they are."""
    if part.startswith("[") or " (" not in part:
        return part
    name, _, where = part.rpartition(" (")
    return f"{name}:{where.rstrip(')').rpartition(':')[2]}"


def _frames_of(collapsed: str) -> Counter[tuple[str, ...]]:
    """Our lines with each frame as ``name:line`` (see ``_frame_key``)."""
    out: Counter[tuple[str, ...]] = Counter()
    for line in collapsed.splitlines():
        stack, count = line.rsplit(" ", 1)
        out[tuple(map(_frame_key, stack.split(";")))] += int(count)
    return out


@pytest.mark.parametrize("python", matrix_params())
def test_the_same_synchronous_frames_as_py_spy_with_the_awaiter_chain_above(python: Python
                                                                             ) -> None:
    """py-spy, same process, same run, same rate, on every interpreter of the matrix
    (py-spy 0.4.3 reads them all, 3.15 and the debug builds included): its stack for
    the spinning task ends in the same frames (names and lines) as aiobpf's; aiobpf
    has the tasks above them where py-spy has the event loop."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    assert py_spy, "py-spy (pip, the test extra) is the reference sampler"
    with run_target(python, "cpu_split.py") as target, \
            tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "py-spy.txt"
        theirs = subprocess.Popen([py_spy, "record", "--pid", str(target.pid), "--rate", "99",
                                   "--duration", "3", "--format", "raw", "--nonblocking",
                                   "-o", str(raw)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            ours = aiobpf("profile", str(target.pid), "--duration", "3")
            said, _ = theirs.communicate(timeout=60)
        finally:
            if theirs.poll() is None:
                theirs.kill()
                theirs.wait()
        assert theirs.returncode == 0, said
        spy = _py_spy_stacks(raw.read_text())
    assert ours.returncode == 0, ours.stderr
    mine = _frames_of(ours.stdout)
    top_spy = spy.most_common(1)[0][0]
    top_mine = mine.most_common(1)[0][0]
    spinning = [f"{name}:{line}" for name, line in top_spy]
    start = spinning.index(next(f for f in spinning if f.startswith("a_middle_outer:")))
    theirs, ours = spinning[start:], list(top_mine[-len(spinning[start:]):])
    # the same frames; the innermost one's line may differ (a sample lands on either
    # line of spin's loop, and each tool's most common stack may pick the other)
    assert ours[:-1] == theirs[:-1] and ours[-1].split(":")[0] == theirs[-1].split(":")[0]
    assert top_mine[:-len(theirs)][-3:] == ("[task] parent", top_mine[-len(theirs) - 2],
                                            "[task] A")
    assert "Handle._run" in spinning[start - 1]   # py-spy: the loop, where we have tasks


@pytest.mark.parametrize("mode", ["cpu", "wall"])
def test_a_target_that_exits_leaves_the_samples_taken(mode: str) -> None:
    with run_target(by_label("sid-3.14"), "cpu_split.py") as target:
        proc = subprocess.Popen([sys.executable, "-m", "aiobpf", "profile", str(target.pid),
                                 "--mode", mode, "--duration", "30"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[2],
                                env={**os.environ, "AIOBPF_SOCKET": NO_DAEMON_SOCKET})
        assert proc.stderr is not None
        if mode == "cpu":   # compiled (1-3 s) and sampling
            assert proc.stderr.readline().startswith("aiobpf: sampling 1 thread of process")
        time.sleep(2)
        target.proc.kill()
        target.proc.wait()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"process {target.pid} exited: writing the samples taken" in err
    assert sum(_ours(out).values()) > 0


# -- top ------------------------------------------------------------------------------------
ROW = re.compile(r"^\s*(\d+\.\d)\s+(-|\d+\.\d)\s+(-|[\d.]+(?:us|ms|s))\s+(.+?)(?:\s{2,}|$)")


def _rows(screen: list[str]) -> dict[str, tuple[float, float | None, float | None]]:
    """top's task rows: chain -> (CPU %, steps/s, longest step in ms)."""
    out = {}
    for line in screen:
        found = ROW.match(line)
        if found:
            cpu, rate, longest, chain = found.groups()
            scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
            unit = re.sub(r"[\d.]", "", longest)
            out[chain.strip()] = (float(cpu), None if rate == "-" else float(rate),
                                  None if longest == "-" else
                                  float(longest[:-len(unit)]) * scale[unit])
    return out


def _tmux(socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    tmux = shutil.which("tmux")
    assert tmux, "tmux is needed (scripts/provision.sh installs it)"
    return subprocess.run([tmux, "-L", socket, "-f", "/dev/null", *args],
                          capture_output=True, text=True, timeout=30)


def _pane_until(socket: str, wanted: str, timeout: float) -> list[str]:
    """The pane's screen once it shows ``wanted`` (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        screen = _tmux(socket, "capture-pane", "-p", "-t", "top").stdout.splitlines()
        if any(wanted in line for line in screen) or time.monotonic() > deadline:
            return screen
        time.sleep(0.3)


def test_top_in_tmux_draws_tasks_and_quits_on_q() -> None:
    """tmux, a real terminal: top draws the tasks of the known split (A about three
    times B's CPU, the same steps per second) over the terminal's whole width (160
    columns, though the environment says COLUMNS=80), q quits it with status 0 and the
    pane shows the shell's screen again, not top's."""
    socket = f"aiobpf-test-{os.getpid()}"
    repo = Path(__file__).resolve().parents[2]
    with run_target(by_label("sid-3.14"), "cpu_split.py") as target:
        command = ("COLUMNS=80 LINES=24 "
                   + shlex.join([sys.executable, "-m", "aiobpf", "top", str(target.pid)])
                   + "; echo top-exited-with=$?; sleep 60")
        started = _tmux(socket, "new-session", "-d", "-s", "top", "-x", "160", "-y", "30",
                        "-c", str(repo), command)
        assert started.returncode == 0, started.stderr
        try:
            screen = _pane_until(socket, "Task-1 > parent > A", timeout=30)
            screen = _pane_until(socket, "never drawn", timeout=4)   # a few refreshes
            rows = _rows(screen)
            print("\n".join(screen))
            assert "Task-1 > parent > A" in rows and "Task-1 > B" in rows, screen
            assert any("outside any task (loop, callbacks)" in line for line in screen), screen
            a_cpu, a_rate, _ = rows["Task-1 > parent > A"]
            b_cpu, b_rate, _ = rows["Task-1 > B"]
            assert a_cpu == pytest.approx(75, abs=10) and b_cpu == pytest.approx(25, abs=10)
            assert a_rate and b_rate and b_rate == pytest.approx(a_rate, rel=0.1), rows
            _tmux(socket, "send-keys", "-t", "top", "q")
            after = _pane_until(socket, "top-exited-with=", timeout=15)
        finally:
            _tmux(socket, "kill-server")
    assert "top-exited-with=0" in "\n".join(after), after
    assert not _rows(after), after    # top's screen is gone: the terminal was restored


def test_top_shows_tasks_by_cpu_share_and_where_tasks_wait() -> None:
    with run_target(by_label("sid-3.14"), "cpu_split.py") as target:
        result = aiobpf("top", str(target.pid), "--iterations", "4", "--rate", "199")
        off = aiobpf("top", str(target.pid), "--iterations", "1", "--no-steps")
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().split("\n\n\n")[-1].splitlines()
    rows = _rows(last)
    assert rows["Task-1 > parent > A"][0] == pytest.approx(75, abs=7)
    assert rows["Task-1 > B"][0] == pytest.approx(25, abs=7)
    assert any("parent /home/user/cpu_split.py:46" in line for line in last)
    assert off.returncode == 0, off.stderr
    assert "STEPS/S, LONGEST step: off (--no-steps)" in off.stdout
    assert all(rate is None for _, rate, _ in _rows(off.stdout.splitlines()).values())


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:   # the other side closed
                break
    return seen


TERM_CODE = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z@])|\x1b[()][0-9A-Za-z]|\x1b[=>78]|(.)",
                       re.DOTALL)


def _screen_lines(drawn: bytes, height: int = 30, width: int = 160) -> list[str]:
    """The screen curses left, as lines: the cursor moves, erasures and repeats of the
    xterm sequences it writes played on a grid (the rest, colours and modes, ignored)."""
    grid = [[" "] * width for _ in range(height)]
    row = col = 0
    last = " "
    for m in TERM_CODE.finditer(drawn.decode("utf-8", "replace")):
        params, final, char = m.groups()
        if char is not None:
            if char == "\r":
                col = 0
            elif char == "\n":
                row = min(row + 1, height - 1)
            elif char == "\b":
                col = max(col - 1, 0)
            elif char.isprintable():
                if col < width:
                    grid[row][col] = last = char
                col += 1
            continue
        if final is None or (params or "").startswith("?"):
            continue
        args = [int(a) if a else 0 for a in (params or "").split(";")]
        n = max(args[0], 1)
        if final in "Hf":
            row = min(max(args[0], 1), height) - 1
            col = min(max(args[1] if len(args) > 1 else 1, 1), width) - 1
        elif final == "A":
            row = max(row - n, 0)
        elif final == "B":
            row = min(row + n, height - 1)
        elif final == "C":
            col = min(col + n, width - 1)
        elif final == "D":
            col = max(col - n, 0)
        elif final == "G":
            col = min(n, width) - 1
        elif final == "d":
            row = min(n, height) - 1
        elif final == "X":
            grid[row][col:col + n] = [" "] * len(grid[row][col:col + n])
        elif final == "b":
            for _ in range(n):
                if col < width:
                    grid[row][col] = last
                col += 1
        elif final == "K":
            lo, hi = {0: (col, width), 1: (0, col + 1), 2: (0, width)}.get(args[0], (0, 0))
            grid[row][lo:hi] = [" "] * (hi - lo)
        elif final == "J":
            if args[0] == 0:
                grid[row][col:] = [" "] * (width - col)
                for r in range(row + 1, height):
                    grid[r] = [" "] * width
            elif args[0] in (2, 3):
                grid = [[" "] * width for _ in range(height)]
    return ["".join(line).rstrip() for line in grid]


def test_top_in_a_terminal_quits_on_q_and_restores_the_terminal() -> None:
    """A pseudo-terminal, as over SSH: the full-screen view draws the tasks with their
    steps per second and longest step (the target's A and B each step once a turn: the
    same rate, at most one turn per 8 ms of A's 6 and B's 2 ms of CPU; A's longest step
    at least its 6 ms, B's 2 ms), and q ends it with status 0, the terminal's normal
    screen restored (curses' exit sequence)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 160, 0, 0))
    with run_target(by_label("sid-3.14"), "cpu_split.py") as target:
        proc = subprocess.Popen([sys.executable, "-m", "aiobpf", "top", str(target.pid)],
                                stdin=slave, stdout=slave, stderr=slave,
                                cwd=Path(__file__).resolve().parents[2],
                                env={**os.environ, "TERM": "xterm"}, start_new_session=True)
        os.close(slave)
        try:
            drawn = _read_until(master, b"Task-1 > parent > A", timeout=30)
            assert b"Task-1 > parent > A" in drawn, drawn[-2000:]
            drawn += _read_until(master, b"never drawn", timeout=3)   # a few refreshes
            os.write(master, b"q")
            proc.wait(timeout=10)
            rest = _read_until(master, b"\x1b[?1049l", timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
    assert proc.returncode == 0
    assert b"\x1b[?1049l" in drawn + rest   # xterm's "leave the alternate screen"
    screen = _screen_lines(drawn)
    assert any("STEPS/S over the last 10 s, LONGEST step since top started" in line
               for line in screen), screen[-40:]
    rows = _rows(screen)
    print("\n".join(screen))   # the screen, as the test read it
    assert "Task-1 > parent > A" in rows, drawn[-3000:]
    _, a_rate, a_longest = rows["Task-1 > parent > A"]
    _, b_rate, b_longest = rows["Task-1 > B"]
    assert a_rate is not None and b_rate is not None and a_longest and b_longest, rows
    assert 10 <= a_rate <= 1 / 0.008 * 1.05, rows
    assert b_rate == pytest.approx(a_rate, rel=0.1), rows
    assert a_longest >= 6.0 and b_longest >= 2.0, rows
