"""The overhead budget's arithmetic (aiobpf.daemon.budget): what a step costs, one
process's account, and the files' capture windows."""

from __future__ import annotations

import pytest

from aiobpf.bpf.abi import TargetStats
from aiobpf.collector.probe_cost import ProbeCosts
from aiobpf.collector.probes import STEP_WRAPPER_CALL, TASK_WAKEUP
from aiobpf.collector.procfs import ThreadTimes
from aiobpf.daemon.budget.account import ProcessAccount
from aiobpf.daemon.budget.cost import (
    PROFILE_SAMPLE_S,
    SYSCALLS_PER_STEP,
    CostModel,
    capture_budget,
    full_overhead,
    profile_overhead,
    step_cost,
)
from aiobpf.daemon.budget.estimate import Reading
from aiobpf.daemon.budget.windows import (
    MEASURE_LIMIT,
    MEASURING_WINDOW,
    PAUSE_SPREAD,
    PAUSE_STEP,
    PLAN_SHARE,
    PRIOR_OVERHEAD,
    FileWindow,
    duty_for,
    next_switch,
)


# -- cost ----------------------------------------------------------------------------------
def test_cost_per_step_adds_the_trap_the_programs_and_the_syscall_hooks() -> None:
    costs = ProbeCosts(trap_s=0.5e-6, syscall_s=0.1e-6)
    assert step_cost(costs, 0.3e-6) == pytest.approx((0.5 + 0.3 + SYSCALLS_PER_STEP * 0.1) * 1e-6)



def test_continuous_profiles_cost_their_rate_times_a_sample_whatever_the_process_does(
        ) -> None:
    """A thread is sampled rate times per second of its own CPU time: the ratio is the
    rate times one sample's cost (35 us: 19 Hz take 0.0665 %, 99 Hz 0.35 %)."""
    assert profile_overhead(19) == pytest.approx(19 * PROFILE_SAMPLE_S) == pytest.approx(0.000665)
    assert profile_overhead(99) == pytest.approx(0.003465)
    assert profile_overhead(0) == 0.0


def test_continuous_profiles_are_taken_from_the_budget_before_the_probes() -> None:
    assert capture_budget(0.01, 0) == 0.01
    assert capture_budget(0.01, 99) == pytest.approx(0.01 - 0.003465)
    assert capture_budget(0.001, 1000) == 0.0      # the profiles alone exceed it
    assert capture_budget(1.0, 1000) == 1.0        # a budget of 1: no limit
    # a file whose full capture costs 10 %: its probes' duty shrinks by the profiles' share
    alone, profiled = FileWindow(window=3.0), FileWindow(window=3.0)
    alone.overheads[1] = profiled.overheads[1] = 0.1
    alone.plan(capture_budget(0.01, 0))
    profiled.plan(capture_budget(0.01, 99))
    assert alone.duty == pytest.approx(PLAN_SHARE * 0.01 / 0.1)
    assert profiled.duty == pytest.approx(PLAN_SHARE * (0.01 - 0.003465) / 0.1)

def test_cost_per_step_adds_the_task_init_probes_per_task_created() -> None:
    """3.12+: each task created passes Task.__init__'s entry and return probes."""
    costs = ProbeCosts(trap_s=0.5e-6, syscall_s=0.1e-6, created_s=1.5e-6)
    assert step_cost(costs, 0.3e-6, created_per_step=0.5) == pytest.approx(
        step_cost(costs, 0.3e-6) + 0.75e-6)


def test_steps_whose_probe_site_is_single_stepped_cost_the_stepped_trap() -> None:
    """Debian 3.14: TaskStepMethWrapper's probe sits on a ``sub`` (stepped out of line),
    task_wakeup's on a ``push`` (emulated): a step costs by the share each probe started."""
    costs = ProbeCosts(trap_s=1e-6, syscall_s=0.0, stepped_trap_s=10e-6)
    model = CostModel.for_sites(costs, None, {STEP_WRAPPER_CALL: "other", TASK_WAKEUP: "push"})
    assert model.stepped_share(0.25) == pytest.approx(0.25)
    assert model.per_step(0.0, 0.25, 0.0) == pytest.approx(0.25 * 10e-6 + 0.75 * 1e-6)
    all_push = CostModel.for_sites(costs, None, {STEP_WRAPPER_CALL: "push"})
    assert all_push.per_step(0.0, 0.25, 0.0) == pytest.approx(1e-6)
    assert CostModel(None, None).per_step(0.0, 0.5, 0.0) is None   # nothing measured


def test_overhead_takes_the_probes_cost_out_of_the_cpu_time() -> None:
    # 100k steps/s at 3 us: 0.3 CPU s/s of the 0.8 measured are the probes'
    assert full_overhead(100_000, 0.8, 3e-6) == pytest.approx(0.3 / 0.5)
    assert full_overhead(0, 0.5, 3e-6) == 0.0
    assert duty_for(0.005, 0.01) == 1.0
    assert duty_for(0.4, 0.01) == pytest.approx(0.025)
    # a model that charges the probes all the CPU is not believed all the way
    assert full_overhead(100_000, 0.3, 3e-6) == pytest.approx(10.0)
    assert duty_for(1000.0, 0.01) == 0.0005


# -- account -------------------------------------------------------------------------------
def _cpu(seconds: float) -> ThreadTimes:
    return ThreadTimes({1: int(seconds * 1e9)})


def _stats(steps: int, prog_ns: int = 0, wrapped: int = 0, created: int = 0,
           read_errors: int = 0) -> TargetStats:
    return TargetStats(steps=steps, finished=steps, created=created, prog_ns_sum=prog_ns,
                       wrapper_steps=wrapped, read_errors=read_errors)


def test_rates_are_measured_over_a_long_enough_stretch_of_a_window() -> None:
    costs = ProbeCosts(trap_s=1e-6, syscall_s=0.0)
    account = ProcessAccount(CostModel(costs, None))
    assert not account.measure(0.0, _cpu(0.0), _stats(0), window_s=2.0)      # the mark
    assert not account.measure(0.05, _cpu(0.01), _stats(100), window_s=2.0)  # too short
    # 0.2 s: 2,000 steps, 0.1 CPU s, 1 us of trap and 1 us of programs per step
    assert account.measure(0.2, _cpu(0.1), _stats(2000, prog_ns=2_000_000), window_s=2.0)
    assert account.step_rate == pytest.approx(10_000)
    assert account.cpu_rate == pytest.approx(0.5)
    assert account.step_cost == pytest.approx(2e-6)
    assert account.overhead_full == pytest.approx(full_overhead(10_000, 0.5, 2e-6))
    # measured: later stretches must cover 0.6 of the window (at most 1 s), smoothed
    assert not account.measure(0.8, _cpu(0.4), _stats(8000, 8_000_000), window_s=2.0)
    assert account.measure(1.2, _cpu(0.6), _stats(14_000, 14_000_000), window_s=2.0)
    assert account.step_rate == pytest.approx(0.5 * 12_000 / 1.0 + 0.5 * 10_000)
    account.restart_rates()   # a new window: rates count from its start
    assert not account.measure(5.0, _cpu(1.0), _stats(20_000), window_s=2.0)


def test_a_fixed_cost_per_step_is_taken_as_given() -> None:
    account = ProcessAccount(CostModel(ProbeCosts(1e-6, 0.0), fixed=3e-6))
    account.measure(0.0, _cpu(0.0), _stats(0), window_s=2.0)
    account.measure(0.2, _cpu(0.1), _stats(2000, prog_ns=10_000_000), window_s=2.0)
    assert account.step_cost == 3e-6


def test_tasks_created_are_derived_where_the_programs_do_not_count_them() -> None:
    """3.11: created = finished + the growth of the pending tasks since tracing began."""
    account = ProcessAccount(counts_creations=False, pending_at_start=10)
    account.read(Reading(0.0, 0.0, _stats(0)), attached=True, pending=10)
    account.read(Reading(1.0, 0.1, _stats(50)), attached=True, pending=25)
    assert account.estimate.counts.finished == 50
    assert account.estimate.counts.created == 65
    account.read(Reading(2.0, 0.2, _stats(60)), attached=True, pending=5)
    assert account.estimate.counts.created == 65   # never decreasing


def test_faults_are_counted_once_per_reading() -> None:
    account = ProcessAccount()
    first = account.read(Reading(0.0, 0.0, _stats(0, read_errors=3)), True, 0)
    second = account.read(Reading(1.0, 0.1, _stats(10, read_errors=5)), True, 0)
    assert (first.read_errors, second.read_errors) == (3, 2)


def test_attached_time_and_the_capture_fraction() -> None:
    account = ProcessAccount()
    assert account.capture_fraction(probed=True) == 1.0
    assert account.capture_fraction(probed=False) == 0.0
    account.elapse(3.0, attached=True)
    account.elapse(6.0, attached=False)
    account.probes_stayed(0.5)   # a slow detach: attached time the next tick did not see
    assert account.attached_s == 3.5
    assert account.capture_fraction(probed=True) == pytest.approx(3.5 / 9.0)


def test_a_window_joins_the_estimate_with_its_own_cpu_time() -> None:
    """Between windows, CPU time is scaled by the steps per own CPU second of the windows
    (the probes' cost taken out)."""
    account = ProcessAccount(CostModel(fixed=1e-6))
    account.step_cost = 1e-6
    account.open_window(_cpu(0.0))
    account.read(Reading(0.0, 0.0, _stats(0)), attached=True, pending=0)
    account.read(Reading(1.0, 0.2, _stats(100_000)), attached=True, pending=0)
    steps, cpu, own = account.close_window(1.0, _cpu(0.2))
    assert (steps, cpu, own) == (100_000, pytest.approx(0.2), pytest.approx(0.1))
    account.read(Reading(5.0, 0.3, _stats(100_000)), attached=False, pending=0)
    assert account.estimate.counts.steps == pytest.approx(200_000)


# -- windows ---------------------------------------------------------------------------------
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
