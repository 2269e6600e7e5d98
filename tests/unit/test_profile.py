"""Profiles (aiobpf.exporters.profile): async stacks from snapshots, and the formats."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import time

import pytest

from aiobpf.collector.model import Awaiter, Frame, Snapshot, Task
from aiobpf.collector.sampling import at_rate
from aiobpf.exporters.profile import collapsed, html, pprof, speedscope
from aiobpf.exporters.profile.profile import Profile
from aiobpf.exporters.profile.stacks import Node, async_stacks


def _task(tid: int, name: str, frames: list[str], *awaiters: int, future: bool = False) -> Task:
    return Task(tid, name, 1, "pending", [Frame(f, "/app.py", 10 * i + 1)
                                         for i, f in enumerate(frames)],
                awaited_by=[Awaiter(a, is_task=not future) for a in awaiters])


def _snapshot(*tasks: Task) -> Snapshot:
    return Snapshot(7, "3.14.0", "release", "/usr/bin/python3", [], list(tasks), 0.0, 0.01)


def _names(stack: tuple[Node, ...]) -> list[str]:
    return [node.name if node.kind == "frame" else node.label() for node in stack]


def test_a_leaf_task_stands_for_its_chain_root_first() -> None:
    snap = _snapshot(_task(1, "main", ["main", "gather"]),
                     _task(2, "worker", ["work", "fetch"], 1),
                     _task(3, "leaf", ["leaf", "sleep"], 2))
    (leaf, stack), = async_stacks(snap)
    assert leaf.name == "leaf"
    assert _names(stack) == ["[task] main", "main", "gather", "[task] worker", "work",
                             "fetch", "[task] leaf", "leaf", "sleep"]


def test_several_awaiters_follow_the_lowest_id_and_say_how_many() -> None:
    snap = _snapshot(_task(5, "b", ["b"]), _task(4, "a", ["a"]), _task(9, "shared", ["s"], 5, 4))
    stacks = {leaf.name: _names(stack) for leaf, stack in async_stacks(snap)}
    assert stacks == {"shared": ["[task] a", "a", "[task] shared (2 parents)", "s"]}


def test_a_cycle_or_a_future_awaiter_ends_the_chain() -> None:
    looped = _snapshot(_task(1, "x", ["x"], 2), _task(2, "y", ["y"], 1), _task(3, "z", ["z"], 1))
    (leaf, stack), = async_stacks(looped)
    assert leaf.name == "z" and _names(stack) == ["[task] y", "y", "[task] x", "x", "[task] z",
                                                  "z"]
    gathered = _snapshot(_task(1, "child", ["c"], 0x99, future=True))
    assert [_names(s) for _, s in async_stacks(gathered)] == [["[task] child", "c"]]


def _profile() -> Profile:
    profile = Profile(7, "wall", 10.0, samples=11, duration_s=1.0)
    snap = _snapshot(_task(1, "main", ["main"]), _task(2, "a;b\nc", ["work"], 1),
                     _task(3, "other", ["idle"], 1))
    for _ in range(profile.samples):
        for _leaf, stack in async_stacks(snap):
            profile.add(stack)
    return profile


def test_collapsed_lines_escape_what_would_split_a_frame_or_a_line() -> None:
    out = "".join(collapsed.lines(_profile()))
    assert out.splitlines() == [
        "[task] main;main (/app.py:1);[task] a\\x3bb\\nc;work (/app.py:1) 11",
        "[task] main;main (/app.py:1);[task] other;idle (/app.py:1) 11"]


def test_speedscope_stacks_index_shared_frames() -> None:
    doc = json.loads(speedscope.render(_profile()))
    frames = doc["shared"]["frames"]
    (profile,) = doc["profiles"]
    assert profile["type"] == "sampled" and profile["weights"] == [11, 11]
    assert next([frames[i]["name"] for i in s] for s in profile["samples"])[:2] == \
        ["[task] main", "main (/app.py:1)"]
    assert frames[1] == {"name": "main (/app.py:1)", "file": "/app.py", "line": 1}
    assert profile["endValue"] == 22


def test_the_html_flame_graph_is_self_contained_and_names_cannot_close_its_script() -> None:
    profile = _profile()
    profile.add((Node("task", "</script><script>alert(1)</script>"),), 3)
    page = html.render(profile)
    assert page.count("<script") == 2 and "alert(1)</script>" not in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)   # nothing fetched
    payload = page.split('type="application/json">')[1].split("</script>")[0]
    root = json.loads(payload)["root"]
    assert root["value"] == 25
    assert sorted(c["name"] for c in root["children"]) == [
        "[task] </script><script>alert(1)</script>", "[task] main"]


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at ``data[i:]`` and the offset after it."""
    shift = value = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _decode(data: bytes) -> list[tuple[int, int, bytes]]:
    """A protobuf message's fields: (number, wire type, value or varint as int)."""
    out, i = [], 0
    while i < len(data):
        key, i = _varint(data, i)
        if key & 7 == 0:
            value, i = _varint(data, i)
            out.append((key >> 3, 0, value))
        else:
            length, i = _varint(data, i)
            out.append((key >> 3, 2, data[i:i + length]))
            i += length
    return out


def _packed(data: bytes) -> list[int]:
    values, i = [], 0
    while i < len(data):
        value, i = _varint(data, i)
        values.append(value)
    return values


def test_pprof_samples_locations_and_functions() -> None:
    fields = _decode(gzip.decompress(pprof.render(_profile())))
    strings = [v.decode() for n, _, v in fields if n == 6]
    assert strings[0] == ""
    functions = {}
    for n, _, v in fields:
        if n == 5:
            f = {k: val for k, _, val in _decode(v)}
            functions[f[1]] = (strings[f[2]], strings[f[4]])
    locations = {}
    for n, _, v in fields:
        if n == 4:
            loc = dict((k, val) for k, _, val in _decode(v))
            line = {k: val for k, _, val in _decode(loc[4])}
            locations[loc[1]] = (*functions[line[1]], line.get(2, 0))
    samples = []
    for n, _, v in fields:
        if n == 2:
            s = {k: val for k, _, val in _decode(v)}
            samples.append(([locations[i] for i in _packed(s[1])], _packed(s[2])))
    ((stack, values),) = [s for s in samples if s[0][0][0] == "work"]
    assert stack[-1] == ("[task] main", "<task>", 0)            # leaf first: root last
    assert stack[0] == ("work", "/app.py", 1)
    assert values == [11, 11 * 100_000_000]                      # 10 Hz: 100 ms a sample
    period = [v for n, _, v in fields if n == 12]
    assert period == [100_000_000]


def test_the_effective_rate_counts_intervals() -> None:
    assert Profile(1, "wall", 10.0, samples=11, duration_s=2.0).effective_rate_hz == 5.0
    assert Profile(1, "wall", 10.0, samples=1).effective_rate_hz == 0.0


def test_samples_skip_ticks_a_slow_read_ran_over_instead_of_bursting() -> None:
    times = [t for t, _ in at_rate(lambda: time.sleep(0.025), rate_hz=100, duration_s=0.3)]
    assert 5 <= len(times) <= 13
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.02   # every read waits for the next tick after the last one


@pytest.mark.parametrize("rate", [50.0, 200.0])
def test_samples_keep_the_rate_asked(rate: float) -> None:
    times = [t for t, _ in at_rate(lambda: None, rate_hz=rate, duration_s=0.2)]
    assert abs(len(times) - rate * 0.2) <= 2


def test_top_ranks_tasks_by_cpu_share_and_counts_tasks_by_await_site() -> None:
    from aiobpf.collector.cpu_samples import CpuSample
    from aiobpf.exporters.profile.top import TopWindow, lines

    snap = _snapshot(_task(1, "main", ["main"]), _task(2, "busy\x1b[2J", ["work"], 1),
                     _task(3, "idle", ["wait"], 1))
    spin = Frame("spin", "/app.py", 7, "function")
    window = TopWindow(seconds=10)
    window.add(0.0, [CpuSample(1, 0, 2, (Frame("work", "/app.py", 1), spin))] * 3
               + [CpuSample(1, 0, 0, (Frame("_run_once", "/asyncio/base_events.py", 9),))])
    window.add(20.0, [CpuSample(1, 0, 2, (spin,))] * 2)   # the first batch ages out
    text = lines(window, snap, "header", width=100)
    rows = [line for line in text if line[:6].strip().replace(".", "").isdigit()]
    assert rows[0].split()[0] == "100.0" and "main > busy\\x1b[2J" in rows[0]
    assert "spin (app.py:7)" in rows[0]
    assert "\x1b" not in "".join(text)
    assert any(line.split()[:2] == ["33.3", "1"] and "wait /app.py:1" in line
               for line in rows[1:])


def test_top_gives_await_sites_their_share_of_the_task_time_over_the_window() -> None:
    from aiobpf.exporters.profile.top import TopWindow, WaitWindow, lines, waiting_sites

    waiting = _snapshot(_task(1, "main", ["main"]), _task(2, "a", ["wait"], 1),
                        _task(3, "b", ["wait"], 1))
    moved = _snapshot(_task(1, "main", ["main"]), _task(2, "a", ["read"], 1))
    waits = WaitWindow(seconds=10)
    waits.add(0.0, waiting_sites(waiting))     # ages out at 20 s
    for at in (11.0, 12.0, 13.0):
        waits.add(at, waiting_sites(waiting))
    waits.add(20.0, waiting_sites(moved))
    text = lines(TopWindow(seconds=10), moved, "header", width=100, waits=waits)
    table = text[text.index("") + 2:]
    # task-refreshes from 11 s on (the one at 0 s is out): wait 2+2+2, main 1+1+1+1,
    # read 1, of 11; "now" is the last refresh's tasks
    shares = {line.split(None, 2)[2]: (line.split()[0], line.split()[1]) for line in table}
    assert shares == {"wait /app.py:1": ("54.5", "0"), "main /app.py:1": ("36.4", "1"),
                      "read /app.py:1": ("9.1", "1")}
