"""The daemon's summary from tasks handed as shared stacks (``Collector.snapshot(parked=
...)``: ``speedups.task_heads`` and ``speedups.stack_level``) against the summary of the
whole snapshot, task by task.  On every 3.14+ interpreter, for every kind of await
chain, for chains deeper than the known path follows and for an await cycle; with the
compiled loops and with their Python reference.  Where tasks are parked at a few
places, the known path must hand most of them (else it is neither tested nor fast)."""

from __future__ import annotations

from typing import Any

import pytest

from aiobpf.collector import frames, snapshot, speedups
from aiobpf.collector.model import Parked
from aiobpf.collector.snapshot import BATCH, KNOWN_BATCH, Collector
from aiobpf.collector.target import open_target
from aiobpf.exporters.prometheus import Summarizer, summarize
from aiobpf.exporters.state import SnapshotSummary
from tests.conftest import matrix_params, run_target
from tests.pythons import Python

SCENES = {
    "every-kind": ("many_shapes.py", "30"),                  # 421 tasks, every kind of chain
    "many-alike": ("depth.py", str(BATCH + 2 * KNOWN_BATCH), "5"),   # several batches
    "too-deep": ("depth.py", str(2 * BATCH), str(speedups.FAST_DEPTH + 6)),
    "cycle": ("await_cycle.py",),
}
# The tasks the known path must hand: all but the first batch's (the first of a kind
# of frame goes the long way, which teaches it), of the kinds it knows.
HANDED = {"every-kind": 1, "many-alike": 2 * KNOWN_BATCH, "too-deep": 0, "cycle": 0}


def _key(summary: SnapshotSummary) -> tuple:
    return summary.pending, summary.stack_depths, summary.await_depths, summary.sites


def _parked(collector: Collector, monkeypatch: pytest.MonkeyPatch
            ) -> tuple[SnapshotSummary, int, int]:
    """The summary as the daemon reads it; how many tasks came as ``Parked``, and how
    many of them the known path handed (the others: read the long way)."""
    summarizer = Summarizer(10)
    parked = known = 0
    park_known = snapshot._Read._park_known

    def add_parked(batch: Parked) -> None:
        nonlocal parked
        parked += len(batch.ids)
        summarizer.add_parked(batch)

    def counted(*args: Any) -> tuple:
        nonlocal known
        left, handed = park_known(*args)
        known += handed
        return left, handed

    collector.forget()
    with monkeypatch.context() as patch:
        patch.setattr(snapshot._Read, "_park_known", counted)
        snap = collector.snapshot(details=False, sink=summarizer.add, names=False,
                                  parked=add_parked)
    return summarizer.finish(snap), parked, known


@pytest.mark.parametrize("scene", list(SCENES))
@pytest.mark.parametrize("python", matrix_params((3, 14)))
def test_a_summary_of_parked_stacks_equals_the_task_by_task_one(
        python: Python, scene: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert speedups.COMPILED, speedups.NOT_COMPILED
    script, *args = SCENES[scene]
    with run_target(python, script, *args) as target:
        collector = Collector(open_target(target.pid))
        try:
            collector.forget()
            whole = collector.snapshot()
            compiled, parked, handed = _parked(collector, monkeypatch)
            monkeypatch.setattr(frames, "stack_level", speedups.stack_level_py)
            monkeypatch.setattr(snapshot, "task_heads", speedups.task_heads_py)
            pure, _, pure_handed = _parked(collector, monkeypatch)
        finally:
            collector.close()
    expected = summarize(whole, 10)
    assert expected.pending == len(whole.tasks) > 1
    assert _key(compiled) == _key(expected)
    assert _key(pure) == _key(expected)
    assert handed == pure_handed
    assert parked >= 0.9 * len(whole.tasks)   # the long way hands most tasks as Parked too
    assert handed >= HANDED[scene], (handed, len(whole.tasks))
    if scene == "too-deep":   # deeper than the known path goes: all of them the long way
        assert handed == 0
