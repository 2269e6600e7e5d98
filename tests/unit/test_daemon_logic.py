"""Pure logic of the daemon: metric families, config, selection (the budget: test_budget)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from aiobpf.collector.model import Awaiter, Frame, Parked, Snapshot, Stacks, Task
from aiobpf.daemon.config import ConfigError, Selection, load
from aiobpf.exporters.metrics import series_cap
from aiobpf.exporters.prometheus import (
    OTHER_SITE,
    MetricsCollector,
    Summarizer,
    _depths_of,
    summarize,
)
from aiobpf.exporters.sites import Sites, await_site, library_pattern
from aiobpf.exporters.state import DaemonState, ProcessView, StepCounts

REPO = Path(__file__).resolve().parents[2]


# -- metrics ---------------------------------------------------------------------------------
def _task(tid: int, depth: int, awaited_by: list[int] = (), filename: str = "/app/x.py"
          ) -> Task:
    frames = [Frame(f"f{i}", filename, 10 + i) for i in range(depth)]
    return Task(tid, f"t{tid}", 1, "pending", frames,
                awaited_by=[Awaiter(a) for a in awaited_by])


def _snapshot(tasks: list[Task]) -> Snapshot:
    return Snapshot(1, "3.14.0", "release", "/usr/bin/python3", [], tasks, 0.0, 0.01)


def test_summary_depths_and_sites() -> None:
    root = _task(1, 1)
    middle = _task(2, 3, [1])
    leaves = [_task(10 + i, 2, [2]) for i in range(5)]
    cycle_a, cycle_b = _task(50, 1, [51]), _task(51, 1, [50])   # must not loop
    summary = summarize(_snapshot([root, middle, *leaves, cycle_a, cycle_b]), top_sites=2)
    assert summary.pending == 9
    assert summary.stack_depths == Counter({1: 3, 3: 1, 2: 5})
    assert summary.await_depths[2] == 5
    assert sum(summary.await_depths.values()) == 9     # the cycle counted, once each
    acyclic = summarize(_snapshot([root, middle, *leaves]), top_sites=2)
    assert acyclic.await_depths == Counter({0: 1, 1: 1, 2: 5})
    assert summary.sites[0] == ("f1 /app/x.py:11", 5)
    assert summary.sites[-1][0] == OTHER_SITE
    assert sum(n for _, n in summary.sites) == 9


def test_summary_streamed_task_by_task() -> None:
    """The daemon's Summarizer sees tasks one at a time, before the snapshot drops
    awaiters that finished during the read: it ignores them as the snapshot would."""
    root, middle = _task(1, 1), _task(2, 3, [1])
    leaves = [_task(10 + i, 2, [2]) for i in range(5)]
    orphan = _task(20, 2, [99, 2])        # 99 finished while the process was read
    gone = _task(21, 1, [99])
    several = _task(22, 1, [98, 21])
    streamed = Summarizer(top_sites=2)
    for task in [several, gone, orphan, *leaves, middle, root]:   # any order
        streamed.add(task)
    summary = streamed.finish(Snapshot(1, "3.14.0", "release", "", [], [], taken_at=1e9,
                                       duration_s=0.5))
    assert summary.pending == 10
    assert summary.await_depths == Counter({0: 2, 1: 2, 2: 6})
    assert summary.read_seconds == 0.5
    assert summary.read_at == 1e9


def _depths_one_by_one(tasks: list[Task]) -> Counter[int]:
    """The await depths as the definition says them, task by task: the chain of first
    awaiters that are tasks of the read (a cycle counts from where it is entered)."""
    ids = {t.id for t in tasks}
    firsts = {t.id: next((a.id for a in t.awaited_by if a.is_task and a.id in ids), None)
              for t in tasks}
    depth = _depths_of({tid: up for tid, up in firsts.items() if tid in
                        {a.id for t in tasks for a in t.awaited_by}})
    out: Counter[int] = Counter()
    for t in tasks:
        up = firsts[t.id]
        out[depth[t.id] if t.id in depth else 0 if up is None else depth[up] + 1] += 1
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(1, 40), max_size=3), min_size=1, max_size=60))
def test_await_depths_counted_by_first_awaiter_equal_one_by_one(awaited: list[list[int]]
                                                                ) -> None:
    """Random await graphs: awaiters that are not tasks of the read (finished), several
    awaiters, cycles; the leaves counted by their first awaiter equal the task-by-task
    count."""
    tasks = [_task(tid, 1, ups) for tid, ups in enumerate(awaited, 1)]
    summarizer = Summarizer(top_sites=1)
    for task in tasks:
        summarizer.add(task)
    assert summarizer.finish(_snapshot(tasks)).await_depths == _depths_one_by_one(tasks)


FRAMES = [Frame("handler", "/srv/app.py", 7), Frame("sleep", "/usr/lib/python3.14/x.py", 1),
          Frame("get", "/venv/lib/python3.14/site-packages/h/c.py", 9), Frame("f", "/a.py", 2)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(FRAMES), max_size=4),
                          st.sampled_from([0, 1, 2, 3, 50])), min_size=1, max_size=40),
       st.integers(1, 40), st.sampled_from([1, 3, 1 << 16]))
def test_a_summary_of_parked_stacks_equals_the_task_by_task_one(
        tasks: list[tuple[list[Frame], int]], cut: int, limit: int) -> None:
    """Tasks handed as shared stacks (``Summarizer.add_parked``), in batches, some one by
    one (a tree that is full), count as the same tasks handed one by one."""
    one_by_one, parked = Summarizer(top_sites=3), Summarizer(top_sites=3)
    stacks = Stacks(limit)
    batch: list[tuple[int, int, int]] = []
    for tid, (frames, first) in enumerate(tasks, 1):
        task = Task(tid, "t", 1, "pending", frames, awaited_by=[Awaiter(first)] if first else [])
        one_by_one.add(task)
        node = stacks.node_of(frames)
        if node is None:
            parked.add(task)
        else:
            batch.append((tid, first, node))
        if len(batch) == cut or tid == len(tasks):
            parked.add_parked(Parked([b[0] for b in batch], [b[1] for b in batch],
                                     [b[2] for b in batch], stacks))
            batch = []
    want, got = one_by_one.finish(_snapshot([])), parked.finish(_snapshot([]))
    assert (got.pending, got.stack_depths, got.await_depths, got.sites) == (
        want.pending, want.stack_depths, want.await_depths, want.sites)


def test_a_site_label_is_made_once_per_frame() -> None:
    """Tasks suspended at one place share their frame objects: the Summarizer labels
    each frame once, and gives every task the label it would get alone."""
    handler, fetch = Frame("handler", "/srv/app.py", 7), Frame("Queue.get", "/x.py", 3)
    tasks = [Task(i, "t", 1, "pending", [handler, fetch if i % 2 else handler])
             for i in range(1, 101)]
    stdlib = Frame("sleep", "/usr/lib/python3.14/asyncio/tasks.py", 702)
    vendored = Frame("get", "/venv/lib/python3.14/site-packages/httpx/_client.py", 9)
    tasks += [Task(i, "t", 1, "pending", frames) for i, frames in enumerate(
        [[handler, vendored, stdlib], [vendored, stdlib], [stdlib], [stdlib, handler]], 101)]
    sites = Sites()
    assert [sites.of(t.frames) for t in tasks] == [await_site(t) for t in tasks]
    assert len(sites) == 4   # each frame object classified and labelled once
    summarizer = Summarizer(top_sites=10)
    for task in tasks:
        summarizer.add(task)
    assert dict(summarizer.sites) == {"Queue.get /x.py:3": 50, "handler /srv/app.py:7": 52,
                                      "get /venv/lib/python3.14/site-packages/httpx/_client.py:9":
                                      1}


def test_await_site_skips_the_standard_library() -> None:
    task = Task(1, "t", 1, "pending", [
        Frame("handler", "/srv/app.py", 7),
        Frame("Queue.get", "/usr/lib/python3.14/asyncio/queues.py", 186),
    ])
    assert await_site(task) == "handler /srv/app.py:7"
    vendored = Task(1, "t", 1, "pending", [
        Frame("fetch", "/usr/lib/python3/dist-packages/aiohttp/client.py", 5)])
    assert await_site(vendored) == "fetch /usr/lib/python3/dist-packages/aiohttp/client.py:5"


def _handler_waiting_on_a_client(packages: str) -> Task:
    """An aiohttp handler awaiting an upstream through aiohttp's client, outermost first."""
    return Task(1, "Task-9", 1, "pending", [
        Frame("RequestHandler._handle_request", f"{packages}/aiohttp/web_protocol.py", 510),
        Frame("handle", "/srv/app/views.py", 12),
        Frame("call_backend", "/srv/app/backend.py", 30),
        Frame("ClientSession._request", f"{packages}/aiohttp/client.py", 770),
        Frame("ClientResponse.start", f"{packages}/aiohttp/client_reqrep.py", 530),
        Frame("DataQueue.read", f"{packages}/aiohttp/streams.py", 703),
        Frame("wait_for", "/usr/local/lib/python3.12/asyncio/tasks.py", 520),
    ])


@pytest.mark.parametrize("packages", [
    "/usr/lib/python3/dist-packages",                      # Debian's
    "/usr/local/lib/python3.12/site-packages",             # the python image's
    "/app/.venv/lib/python3.14/site-packages",             # a venv in a container
    "/home/u/.local/lib/python3.13/site-packages",         # pip --user
])
def test_await_site_is_the_application_frame(packages: str) -> None:
    """By default the site is the application's innermost frame, not the library's
    read it waits in; "library" names that read (the innermost non-stdlib frame)."""
    task = _handler_waiting_on_a_client(packages)
    assert await_site(task) == "call_backend /srv/app/backend.py:30"
    assert await_site(task, library_pattern("application")) == await_site(task)
    assert await_site(task, library_pattern("library")) == \
        f"DataQueue.read {packages}/aiohttp/streams.py:703"


def test_await_site_without_application_frames_is_the_library_frame() -> None:
    """An idle keep-alive connection waits in aiohttp only: named by aiohttp's frame,
    not left out (the sum over sites counts the same tasks whatever the setting)."""
    idle = Task(2, "Task-3", 1, "pending", [
        Frame("RequestHandler.start", "/usr/lib/python3/dist-packages/aiohttp/web_protocol.py",
              620),
        Frame("sleep", "/usr/lib/python3.14/asyncio/tasks.py", 702)])
    assert await_site(idle) == \
        "RequestHandler.start /usr/lib/python3/dist-packages/aiohttp/web_protocol.py:620"
    only_stdlib = Task(3, "t", 1, "pending", [Frame("sleep", "<frozen asyncio.tasks>", 1)])
    assert await_site(only_stdlib) is None


def test_await_site_of_an_application_installed_as_a_package() -> None:
    """A list of expressions says which files are library code: the application's own
    package in site-packages is not."""
    packages = "/usr/local/lib/python3.12/site-packages"
    task = _handler_waiting_on_a_client(packages)
    task.frames[2] = Frame("call_backend", f"{packages}/myapp/backend.py", 30)
    task.frames[1] = Frame("handle", f"{packages}/myapp/views.py", 12)
    assert await_site(task).startswith("DataQueue.read ")     # all of it is installed
    mine = library_pattern([r"/(site|dist)-packages/(?!myapp/)"])
    assert await_site(task, mine) == f"call_backend {packages}/myapp/backend.py:30"


def test_summaries_count_sites_by_the_setting() -> None:
    tasks = [_handler_waiting_on_a_client("/usr/lib/python3/dist-packages")] * 3
    assert summarize(_snapshot(tasks), top_sites=10).sites == \
        [("call_backend /srv/app/backend.py:30", 3)]
    by_library = summarize(_snapshot(tasks), top_sites=10, library=library_pattern("library"))
    assert by_library.sites == [
        ("DataQueue.read /usr/lib/python3/dist-packages/aiohttp/streams.py:703", 3)]


def _exposition(views: list[ProcessView]) -> str:
    registry = CollectorRegistry()
    registry.register(MetricsCollector(lambda: DaemonState(views, Counter({"attach": 2}))))
    return generate_latest(registry).decode()


def test_exposition_and_the_series_cap() -> None:
    tasks = [_task(i, 1 + i % 40, filename=f"/app/m{i}.py") for i in range(500)]
    counts = StepCounts()
    counts.step_hist[25] = 4          # four steps of 33.5-67.1 ms
    counts.steps = 4
    view = ProcessView(7, "python3", "3.14.0", "", "full",
                       summarize(_snapshot(tasks), top_sites=10), counts)
    text = _exposition([view])
    per_process = [ln for ln in text.splitlines() if 'pid="7"' in ln]
    assert len(per_process) == series_cap(10)
    assert 'aiobpf_task_step_duration_seconds_bucket{container="",le="0.016777216"' in text
    bucket = next(ln for ln in per_process
                  if "step_duration_seconds_bucket" in ln and 'le="0.067108864"' in ln)
    assert bucket.endswith(" 4.0")
    assert 'aiobpf_errors_total{kind="attach"} 2.0' in text
    assert "aiobpf_build_info{" in text


# -- config and selection ------------------------------------------------------------------------
def test_the_documented_config_loads() -> None:
    config = load(REPO / "deploy" / "aiobpf.toml")
    assert config.listen_address == ("127.0.0.1", 9477)
    assert config.budget == 0.01
    assert config.bpf is True
    assert config.fixed_probe_cost is None       # "auto": measured
    assert config.site_frames == "application"
    assert config.library_frames == library_pattern("application")


def test_site_frames_as_expressions(tmp_path: Path) -> None:
    path = tmp_path / "aiobpf.toml"
    path.write_text('[daemon]\nsite_frames = ["/vendor/", "/site-packages/(?!myapp/)"]\n')
    library = load(path).library_frames
    assert library is not None
    assert library.search("/srv/vendor/lib.py")
    assert library.search("/usr/lib/python3.12/site-packages/aiohttp/streams.py")
    assert not library.search("/usr/lib/python3.12/site-packages/myapp/views.py")
    path.write_text('[daemon]\nsite_frames = "library"\n')
    assert load(path).library_frames is None


def test_continuous_profiles_are_off_until_asked_for_then_19_hz(tmp_path: Path) -> None:
    from aiobpf.daemon.service import profile_refusal

    documented = load(REPO / "deploy" / "aiobpf.toml")
    assert documented.profiles is False and documented.profile_rate == 19
    path = tmp_path / "aiobpf.toml"
    path.write_text("[daemon]\nprofiles = true\n")
    on = load(path)
    assert on.profiles is True and on.profile_rate == 19
    asked = {"mode": "cpu", "rate": None, "duration": 5}
    assert profile_refusal(asked, on, on=True) is None
    assert "could not start" in str(profile_refusal(asked, on, on=False))
    assert "profiles = false" in str(profile_refusal(asked, documented, on=False))
    assert "19 Hz" in str(profile_refusal({**asked, "rate": 99}, on, on=True))


def test_a_fixed_probe_cost(tmp_path: Path) -> None:
    path = tmp_path / "aiobpf.toml"
    path.write_text("[daemon]\nprobe_cost_us = 3\n")
    assert load(path).fixed_probe_cost == pytest.approx(3e-6)


@pytest.mark.parametrize(("text", "said"), [
    ("[daemon]\nbudget = 2\n", "budget"),
    ("[daemon]\nlisten = \"nowhere\"\n", "HOST:PORT"),
    ("[daemon]\nlisen = \"x:1\"\n", "lisen"),
    ("[select]\ncmdline = [\"(\"]\n", "regular expression"),
    ("[other]\n", "unknown section"),
    ("[daemon\n", "aiobpf.toml"),
    ("[daemon]\nbpf = 1\n", "bpf must be a bool"),
    ("[daemon]\nprofiles = 1\n", "profiles must be a bool"),
    ("[daemon]\nprofile_rate = 0\n", "profiles = false turns them off"),
    ("[daemon]\nprobe_cost_us = \"fast\"\n", "probe_cost_us"),
    ("[daemon]\nprobe_cost_us = -1\n", "probe_cost_us"),
    ("[daemon]\nbudget = true\n", "budget must be a float"),
    ("[daemon]\nsite_frames = \"app\"\n", "site_frames: \"application\", \"library\" or a list"),
    ("[daemon]\nsite_frames = 1\n", "site_frames: \"application\", \"library\" or a list"),
    ("[daemon]\nsite_frames = [\"(\"]\n", "site_frames: bad regular expression"),
    ("[daemon]\nsite_frames = [\"(?i)a\", \"b\"]\n", "site_frames: the expressions do not combine"),
])
def test_config_errors_name_the_key(tmp_path: Path, text: str, said: str) -> None:
    path = tmp_path / "aiobpf.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=said.replace("(", r"\(")):
        load(path)


def test_selection_by_command_line_user_and_container() -> None:
    everything = Selection()
    assert everything.accepts("python app.py", 1000, "app", "")
    chosen = Selection(cmdline=["app\\.py"], exclude_cmdline=["--test"], users=["app"],
                       containers=["host"])
    assert chosen.accepts("python app.py", 1000, "app", "")
    assert not chosen.accepts("python app.py --test", 1000, "app", "")
    assert not chosen.accepts("python other.py", 1000, "app", "")
    assert not chosen.accepts("python app.py", 0, "root", "")
    assert not chosen.accepts("python app.py", 1000, "app", "0123456789ab")
    by_id = Selection(containers=["0123"], users=["1000"])
    assert by_id.accepts("x", 1000, "app", "0123456789ab")

