"""The daemon's memory reads paced to read_budget of one CPU (daemon/budget/reads.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiobpf.daemon.budget.reads import read_intervals


def test_cheap_reads_keep_the_refresh_interval() -> None:
    costs = {1: 0.001, 2: 0.004, 3: 0.0}
    assert read_intervals(costs, 5.0, 0.02) == {1: 5.0, 2: 5.0, 3: 5.0}


def test_a_costly_process_is_read_less_often_and_the_others_are_not() -> None:
    """100,000 tasks (~1 s of CPU a read) beside two small processes: the small ones
    stay at 5 s, the big one gets what they leave of 2 % of a CPU."""
    intervals = read_intervals({"big": 1.0, "a": 0.002, "b": 0.003}, 5.0, 0.02)
    assert intervals["a"] == intervals["b"] == 5.0
    left = 0.02 - 0.002 / 5 - 0.003 / 5
    assert intervals["big"] == pytest.approx(1.0 / left)   # ~51 s


def test_costly_processes_share_what_is_left_equally() -> None:
    intervals = read_intervals({1: 0.5, 2: 1.0, 3: 0.01}, 5.0, 0.02)
    assert intervals[3] == 5.0
    share = (0.02 - 0.01 / 5) / 2
    assert intervals[1] == pytest.approx(0.5 / share)
    assert intervals[2] == pytest.approx(1.0 / share)


def test_many_small_processes_together_are_held_to_the_budget() -> None:
    """Five hundred processes of 10 ms each would take 100 % of a CPU at 5 s."""
    intervals = read_intervals({pid: 0.01 for pid in range(500)}, 5.0, 0.02)
    assert sum(0.01 / s for s in intervals.values()) == pytest.approx(0.02)
    assert all(s == pytest.approx(250.0) for s in intervals.values())


@given(st.dictionaries(st.integers(), st.floats(0.0, 100.0), max_size=50),
       st.floats(0.1, 60.0), st.floats(0.001, 1.0))
def test_reads_never_exceed_the_budget_nor_come_faster_than_the_refresh(
        costs: dict[int, float], refresh: float, budget: float) -> None:
    intervals = read_intervals(costs, refresh, budget)
    assert intervals.keys() == costs.keys()
    assert all(s >= refresh for s in intervals.values())
    assert sum(costs[k] / s for k, s in intervals.items()) <= budget * (1 + 1e-9) + 1e-12
    # and no process is paced while the reads of all of them at the refresh fit
    if sum(costs.values()) / refresh <= budget:
        assert all(s == refresh for s in intervals.values())
