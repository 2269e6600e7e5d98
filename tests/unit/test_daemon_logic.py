"""Pure logic of the daemon: the budget's schedule, metric families, config, selection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from aiobpf.collector.model import Awaiter, Frame, Snapshot, Task
from aiobpf.collector.probe_cost import SYSCALLS_PER_STEP, ProbeCosts
from aiobpf.daemon.budget import (
    MEASURE_LIMIT,
    MEASURING_WINDOW,
    PAUSE_SPREAD,
    PAUSE_STEP,
    PLAN_SHARE,
    PRIOR_OVERHEAD,
    FileWindow,
    duty_for,
    full_overhead,
    next_switch,
)
from aiobpf.daemon.config import ConfigError, Selection, load
from aiobpf.exporters.prometheus import (
    OTHER_SITE,
    DaemonState,
    MetricsCollector,
    ProcessView,
    StepCounts,
    Summarizer,
    series_cap,
    summarize,
)
from aiobpf.exporters.sites import await_site, library_pattern

REPO = Path(__file__).resolve().parents[2]


# -- budget --------------------------------------------------------------------------------
def test_overhead_takes_the_probes_cost_out_of_the_cpu_time() -> None:
    # 100k steps/s at 3 us: 0.3 CPU s/s of the 0.8 measured are the probes'
    assert full_overhead(100_000, 0.8, 3e-6) == pytest.approx(0.3 / 0.5)
    assert full_overhead(0, 0.5, 3e-6) == 0.0
    assert duty_for(0.005, 0.01) == 1.0
    assert duty_for(0.4, 0.01) == pytest.approx(0.025)
    # a model that charges the probes all the CPU is not believed all the way
    assert full_overhead(100_000, 0.3, 3e-6) == pytest.approx(10.0)
    assert duty_for(1000.0, 0.01) == 0.0005


def _attached_fraction(window: FileWindow, tick: float, until: float) -> float:
    """Run the schedule as the daemon does, looking every ``tick`` seconds."""
    attached_time, t = 0.0, 0.0
    while t < until:
        change = window.step(t)
        if change is not None:
            window.attached = change
        if window.attached:
            attached_time += tick
        t += tick
    return attached_time / t


def test_windows_attach_for_the_duty_fraction_of_the_time() -> None:
    window = FileWindow(window=0.5)
    window.overheads = {1: 0.2, 2: 0.05}      # the costliest process decides
    window.plan(budget=0.03)                  # planned for a third: 1 %
    assert window.duty == pytest.approx(0.05)
    assert _attached_fraction(window, tick=0.01, until=100) == pytest.approx(0.05, abs=0.01)


@pytest.mark.parametrize("tick", [0.2, 0.35])
def test_windows_that_run_over_a_tick_still_keep_the_duty(tick: float) -> None:
    """The daemon looks every tick (0.2 s), so a 0.5 s window lasts 0.6 s: the pause
    after it grows to match, and the fraction stays at the duty."""
    window = FileWindow(window=0.5)
    window.overheads = {1: 0.5}
    window.plan(budget=0.03)                  # duty 2 %
    assert _attached_fraction(window, tick, until=3000) == pytest.approx(0.02, rel=0.1)


def test_a_slow_detach_counts_as_attached_time() -> None:
    """Closing uprobes takes ~250 ms: the pause after the window grows so that the
    fraction, detach included, stays at the duty."""
    window = FileWindow(window=0.5)
    window.overheads = {1: 0.5}
    window.plan(budget=0.03)                  # duty 2 %
    attached, t, detach = 0.0, 0.0, 0.25
    while t < 3000:
        change = window.step(t)
        if change is False:
            attached += detach                # the probes stay in place meanwhile
            window.detach_took(detach)
            t += detach
        if window.attached if change is None else change:
            attached += 0.2
        if change is not None:
            window.attached = change
        t += 0.2
    assert attached / t == pytest.approx(0.02, rel=0.1)


def test_dumps_open_windows_early_within_the_duty() -> None:
    """A dump asking for the probes every second gets an early window only once what
    earlier ones skipped is paid for: over time the fraction stays at the duty (a
    window's worth more at most), refusals say why, and a held window stays open."""
    window = FileWindow(window=0.5)
    window.overheads = {1: 0.5}
    window.plan(budget=0.03)                  # duty 2 %: a 0.5 s window every 25 s
    attached, t, tick, granted, refused = 0.0, 0.0, 0.1, 0, []
    while t < 3000:
        if round(t, 6) % 1.0 == 0.0:         # a dump every second, held 0.8 s
            why = window.open_for_dump(t, t + 0.8)
            granted += why is None
            if why is not None:
                refused.append(why)
        change = window.step(t)
        if change is not None:
            window.attached = change
        if window.attached:
            attached += tick
            if t < window.held_until:
                assert change is None or change   # never closed while a dump holds it
        t += tick
    assert attached / t == pytest.approx(0.02, rel=0.15)
    assert granted > 50                        # about every other planned window
    assert "overhead budget refuses an early window" in refused[0]
    assert "2% of the time" in refused[0]


def test_windows_plan_for_a_third_of_the_budget() -> None:
    """Room for the estimate's error: a process whose full capture is estimated at
    0.8 % of its CPU is windowed under a 1 % budget, to a third of it expected."""
    window = FileWindow(window=0.5)
    window.overheads = {1: 0.008}
    window.plan(budget=0.01)
    assert window.duty == pytest.approx(0.01 / 3 / 0.008)
    assert window.duty * 0.008 == pytest.approx(PLAN_SHARE * 0.01)


def test_full_capture_within_the_budget_never_detaches() -> None:
    window = FileWindow(window=0.5, attached=False)
    window.overheads = {1: 0.004}
    window.plan(budget=0.015)                 # under a third of the budget
    assert window.step(0.0) is True           # re-attached at once
    window.attached = True
    assert all(window.step(t) is None for t in range(1, 100))
    window.overheads = {1: 0.9}
    window.plan(budget=1.0)                   # no limit: full capture, whatever it costs
    assert window.duty == 1.0


def test_a_process_not_yet_measured_counts_at_the_prior() -> None:
    """Until measured, a process is assumed as costly as full capture may be: its file
    is windowed from the start, and the costliest process (measured or not) decides."""
    window = FileWindow(window=0.5)
    window.overheads = {1: None}
    window.plan(budget=0.01)
    assert window.measuring
    assert window.duty == pytest.approx(PLAN_SHARE * 0.01 / PRIOR_OVERHEAD)
    window.overheads = {1: 0.001, 2: None}    # an idle process and a newcomer
    window.plan(budget=0.01)
    assert window.duty == pytest.approx(PLAN_SHARE * 0.01 / PRIOR_OVERHEAD)
    window.overheads = {1: 0.001, 2: 3 * PRIOR_OVERHEAD}
    window.plan(budget=0.01)
    assert not window.measuring
    assert window.duty == pytest.approx(PLAN_SHARE * 0.01 / (3 * PRIOR_OVERHEAD))
    window.overheads = {1: None}
    window.plan(budget=1.0)                   # no limit: full capture, measured or not
    assert window.duty == 1.0


_UNSPREAD = (0.5 - PAUSE_STEP) % 1.0   # the first pause is exactly what the duty asks for


def _discover(measured_at: float | None, overhead: float, tick: float = 0.05,
              until: float = 300.0, budget: float = 0.01, detach: float = 0.25
              ) -> tuple[FileWindow, list[tuple[float, bool]]]:
    """A new file, its probes placed at 0, run as the daemon does: the process's cost
    comes in at ``measured_at`` (None: never); a detach takes ``detach`` s with the
    probes in place.  Returns the window and its switches (time, attached)."""
    window = FileWindow(window=0.5, attached_at=0.0, phase=_UNSPREAD)
    switches: list[tuple[float, bool]] = []
    t = 0.0
    while t < until:
        measured = measured_at is not None and t >= measured_at
        window.overheads = {1: overhead if measured else None}
        window.plan(budget)
        change = window.step(t)
        if change is not None:
            window.attached = change
            switches.append((t, change))
        if change is False:
            window.detach_took(detach)
            t += detach
        t += tick
    return window, switches


def test_pauses_vary_so_that_windows_sample_a_periodic_load_without_bias() -> None:
    """A load that is on for half of every period equal to the nominal window cycle
    (the worst case for fixed pauses: every window lands in the same phase) is
    sampled on and off alike, and the attached fraction still keeps the duty."""
    window = FileWindow(window=0.5, phase=0.0)
    window.overheads = {1: 0.5}
    window.plan(budget=0.03)                  # duty 2 %: a window every 25 s
    period = window.window / window.duty
    tick, t, on_ticks, attached_ticks, factors = 0.05, 0.0, 0, 0, []
    while t < 20_000:
        change = window.step(t)
        if change is False:
            attached_for = max(t - window.attached_at, window.length)
            factors.append((window.switch_at - t) / (attached_for * (1 / window.duty - 1)))
        if change is not None:
            window.attached = change
        if window.attached:
            attached_ticks += 1
            on_ticks += (t % period) < period / 2
        t += tick
    assert on_ticks / attached_ticks == pytest.approx(0.5, abs=0.05)
    assert attached_ticks * tick / t == pytest.approx(window.duty, rel=0.1)
    assert min(factors) >= 1 - PAUSE_SPREAD - 0.01 and max(factors) <= 1 + PAUSE_SPREAD + 0.01
    assert sum(factors) / len(factors) == pytest.approx(1.0, abs=0.02)


def _attached_until(switches: list[tuple[float, bool]], until: float,
                    detach: float = 0.25) -> float:
    """Seconds attached in [0, until] (detaches included), the probes placed at 0."""
    on, since = 0.0, 0.0
    for t, attached in switches:
        if t > until:
            break
        if attached:
            since = t
        else:
            on += min(t + detach, until) - since
            since = -1.0
    return on + (until - since if since >= 0 else 0.0)


def test_a_new_busy_process_is_measured_in_a_short_window_then_paused() -> None:
    """No full capture until measured: the probes come off after a short measuring
    window (and its slow detach), and the pause after it, sized from the measurement,
    keeps the first cycle's attached fraction at the duty."""
    window, switches = _discover(measured_at=MEASURING_WINDOW, overhead=0.5)
    first_detach, first_attach = switches[0][0], switches[1][0]
    assert switches[0][1] is False and switches[1][1] is True
    assert first_detach <= MEASURING_WINDOW + 0.1       # a tick late at most
    on = first_detach + 0.25                            # the detach counts as attached
    assert on / first_attach == pytest.approx(window.duty, rel=0.05)
    assert _attached_until(switches, 10.0) == pytest.approx(on)
    # then windows of the configured length, at the same duty
    assert switches[2][0] - switches[1][0] >= window.window


def test_a_measuring_window_waits_for_the_measurement_within_a_limit() -> None:
    """A measurement that comes in late keeps the window open for it; one that never
    comes closes it at ``MEASURE_LIMIT``, and the prior sizes the pause."""
    _, switches = _discover(measured_at=0.4, overhead=0.5)
    assert 0.4 <= switches[0][0] <= 0.5
    _, switches = _discover(measured_at=None, overhead=0.5, until=4000)
    assert MEASURE_LIMIT <= switches[0][0] <= MEASURE_LIMIT + 0.1
    on = switches[0][0] + 0.25
    assert on / switches[1][0] == pytest.approx(PLAN_SHARE * 0.01 / PRIOR_OVERHEAD, rel=0.05)


def test_a_new_process_within_the_budget_keeps_its_probes() -> None:
    """An idle process is measured within the budget in its first window: full
    capture, without a detach."""
    _, switches = _discover(measured_at=MEASURING_WINDOW, overhead=0.001)
    assert switches == []


def test_a_process_that_joins_a_paused_file_waits_for_its_next_window() -> None:
    """The pause pays for the windows of the file's other processes: a newcomer does
    not open a window early; the next window is a short one that measures it."""
    window = FileWindow(window=0.5, attached=False, switch_at=100.0)
    window.overheads = {1: 0.5, 2: None}
    window.plan(budget=0.01)
    assert all(window.step(t) is None for t in range(50, 100))
    assert window.step(100.0) is True
    window.attached = True
    assert window.switch_at == pytest.approx(100.0 + MEASURING_WINDOW)


def test_a_process_that_joins_a_fully_captured_file_is_measured_at_once() -> None:
    """A busy newcomer on a file captured in full (its other processes idle) does not
    get full capture until measured: a measuring window starts, then a pause."""
    window = FileWindow(window=0.5)
    window.overheads = {1: 0.001}
    window.plan(budget=0.01)
    assert window.step(10.0) is None and window.duty == 1.0
    window.overheads = {1: 0.001, 2: None}
    window.plan(budget=0.01)
    assert window.step(20.0) is None
    assert window.switch_at == pytest.approx(20.0 + MEASURING_WINDOW)
    window.overheads = {1: 0.001, 2: 0.5}
    window.plan(budget=0.01)
    assert window.step(20.0 + MEASURING_WINDOW) is False


def test_the_loop_wakes_for_the_next_switch() -> None:
    idle = FileWindow(window=0.5)                      # full capture: no switch planned
    paused = FileWindow(window=0.5, attached=False, switch_at=42.0)
    measuring = FileWindow(window=0.5, switch_at=7.5)
    assert next_switch([]) is None
    assert next_switch([idle]) is None
    assert next_switch([idle, paused, measuring]) == 7.5


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
    summary = streamed.finish(0.5)
    assert summary.pending == 10
    assert summary.await_depths == Counter({0: 2, 1: 2, 2: 6})
    assert summary.read_seconds == 0.5


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


def test_a_fixed_probe_cost(tmp_path: Path) -> None:
    path = tmp_path / "aiobpf.toml"
    path.write_text("[daemon]\nprobe_cost_us = 3\n")
    assert load(path).fixed_probe_cost == pytest.approx(3e-6)


def test_cost_per_step_adds_the_trap_the_programs_and_the_syscall_hooks() -> None:
    costs = ProbeCosts(trap_s=0.5e-6, syscall_s=0.1e-6)
    assert costs.per_step(0.3e-6) == pytest.approx((0.5 + 0.3 + SYSCALLS_PER_STEP * 0.1) * 1e-6)


def test_cost_per_step_adds_the_task_init_probes_per_task_created() -> None:
    """3.12+: each task created passes Task.__init__'s entry and return probes."""
    costs = ProbeCosts(trap_s=0.5e-6, syscall_s=0.1e-6, created_s=1.5e-6)
    assert costs.per_step(0.3e-6, created_per_step=0.5) == pytest.approx(
        costs.per_step(0.3e-6) + 0.75e-6)


@pytest.mark.parametrize(("text", "said"), [
    ("[daemon]\nbudget = 2\n", "budget"),
    ("[daemon]\nlisten = \"nowhere\"\n", "HOST:PORT"),
    ("[daemon]\nlisen = \"x:1\"\n", "lisen"),
    ("[select]\ncmdline = [\"(\"]\n", "regular expression"),
    ("[other]\n", "unknown section"),
    ("[daemon\n", "aiobpf.toml"),
    ("[daemon]\nbpf = 1\n", "bpf must be a bool"),
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


def test_selection() -> None:
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


def test_the_dashboard_queries_only_what_is_exported() -> None:
    import json
    import re

    dashboard = (REPO / "deploy" / "grafana" / "aiobpf-dashboard.json").read_text()
    queried = set(re.findall(r"aiobpf_\w+", "".join(
        str(v) for v in _values(json.loads(dashboard), "expr"))))
    view = ProcessView(7, "python3", "3.14.0", "", "full",
                       summarize(_snapshot([_task(1, 2)]), top_sites=10), StepCounts())
    exported = {line.split("{")[0].split(" ")[0]
                for line in _exposition([view]).splitlines() if not line.startswith("#")}
    assert queried and queried <= exported, queried - exported


def _values(node: object, key: str) -> list:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == key] + [
            x for v in node.values() for x in _values(v, key)]
    if isinstance(node, list):
        return [x for v in node for x in _values(v, key)]
    return []
