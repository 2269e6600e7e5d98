"""Examinations of new processes paced per user (daemon/budget/reads.py FirstReads)."""

from __future__ import annotations

import pytest

from aiobpf.daemon.budget.reads import FIRST_READS_BURST_S, MAX_LEDGERS, FirstReads


def test_a_burst_then_the_budget_rate() -> None:
    reads = FirstReads(0.01)   # burst: 6 CPU s, then 0.01 CPU s per s
    assert reads.burst == pytest.approx(0.01 * FIRST_READS_BURST_S)
    now = 100.0
    for _ in range(6):              # six examinations of 1 s each, at once
        assert reads.allows(1000, now)
        reads.spend(1000, 1.0, now)
    assert not reads.allows(1000, now)
    assert reads.allows(1000, now + 1.0)         # 0.01 s paid back: below the burst
    reads.spend(1000, 1.0, now + 1.0)            # 6.99 s owed
    assert not reads.allows(1000, now + 99.0)    # 6.01 s
    assert reads.allows(1000, now + 101.0)       # 5.99 s
    # Over a long attack, what the user gets is the burst plus the rate.
    spent, t = 6.0, now
    while t < now + 1000.0:
        t += 1.0
        if reads.allows(1000, t):
            reads.spend(1000, 1.0, t)
            spent += 1.0
    assert spent <= 6.0 + 0.01 * 1000.0 + 1.0


def test_one_users_copies_do_not_hold_up_another_user() -> None:
    reads = FirstReads(0.01)
    reads.spend(1000, 100.0, 0.0)
    assert not reads.allows(1000, 1.0)
    assert reads.allows(0, 1.0) and reads.allows(1001, 1.0)


def test_users_remembered_are_bounded() -> None:
    reads = FirstReads(0.01)
    for uid in range(MAX_LEDGERS + 10):
        reads.spend(uid, 10.0, 0.0)
    assert len(reads._owed) <= MAX_LEDGERS
    assert not reads.allows(MAX_LEDGERS + 9, 0.0)   # the newest still owes
