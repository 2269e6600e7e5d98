"""One collector, reads inside reads: what a read was asked for and found stays its own.

The daemon hands each task to a summary as it is read; a dump asked meanwhile reads
the same target through the same collector.  A read taken while another one is under
way (here: from inside the first one's sink, the worst moment) must change neither the
first read's options (names decoded or not) nor what it reports.
"""

from __future__ import annotations

from aiobpf.collector.model import Task
from aiobpf.collector.snapshot import BATCH, Collector
from aiobpf.collector.target import open_target
from tests.conftest import run_target
from tests.pythons import by_label

TASKS = 4 * BATCH   # several batches: the inner read happens while the outer one reads on


def test_a_read_inside_a_read_leaves_the_outer_one_whole() -> None:
    with run_target(by_label("sid-3.14"), "many_tasks.py", str(TASKS)) as target:
        found = open_target(target.pid)
        collector = Collector(found)
        try:
            inner: list[int] = []
            outer: list[Task] = []

            def sink(task: Task) -> None:
                if not inner:   # the first task: a read without names, to the end
                    count = [0]

                    def count_one(_: Task) -> None:
                        count[0] += 1

                    collector.snapshot(details=False, sink=count_one, names=False)
                    inner.append(count[0])
                outer.append(task)

            snapshot = collector.snapshot(sink=sink)
        finally:
            collector.close()
            found.close()
    leaves = [t for t in outer if t.name.startswith("leaf-")]
    assert inner and inner[0] == len(outer) > TASKS
    assert len(leaves) == TASKS, sorted({t.name for t in outer} - {t.name for t in leaves})[:5]
    assert all([f.name for f in t.frames][:3] == ["leaf", "middle", "inner"] for t in leaves)
    assert not snapshot.truncated
