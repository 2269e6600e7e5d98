"""The metrics endpoint shows exactly the families of the table (aiobpf/exporters/metrics.py):
names, types, help, labels and buckets; aiobpf's own process metrics are unprefixed."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from aiobpf.collector.model import Frame, Snapshot, Task
from aiobpf.daemon.metrics_server import Rejections, own_metrics
from aiobpf.exporters.metrics import (
    BY_KEY,
    ERROR_KINDS,
    FAMILIES,
    OWN_PROCESS_METRICS,
    TIME_BUCKETS,
    series_cap,
)
from aiobpf.exporters.prometheus import (
    MetricsCollector,
    summarize,
)
from aiobpf.exporters.state import DaemonState, ProcessView, StepCounts

PACKAGE = Path(__file__).resolve().parents[2] / "aiobpf"


def _scrape() -> str:
    """One page of everything the endpoint shows, for a fully captured process (in
    OpenMetrics, which tells gauge histograms from histograms)."""
    tasks = [Task(i, f"t{i}", 1, "pending", [Frame("f", f"/app/m{i}.py", 3)])
             for i in range(20)]
    snapshot = Snapshot(7, "3.14.0", "release", "/usr/bin/python3", [], tasks, 0.0, 0.01)
    view = ProcessView(7, "python3", "3.14.0", "", "full", summarize(snapshot, top_sites=10),
                       StepCounts())
    rejections = Rejections()
    rejections.add("timeout")
    registry = own_metrics(rejections)
    registry.register(MetricsCollector(lambda: DaemonState([view], Counter({"read": 1}))))
    return generate_latest(registry).decode()


def test_the_endpoint_shows_the_table_and_nothing_else() -> None:
    shown = {family.name: family for family in text_string_to_metric_families(_scrape())}
    for spec in FAMILIES:
        family = shown.pop(spec.name)
        assert family.type == spec.type, spec.name
        assert family.documentation == spec.documentation, spec.name
        labels = {name for sample in family.samples for name in sample.labels} - {"le"}
        assert labels == set(spec.all_labels), spec.name
        assert {sample.name for sample in family.samples} <= set(spec.samples), spec.name
    own = {name for family in shown.values() for name in
           {sample.name for sample in family.samples}}
    assert own == set(OWN_PROCESS_METRICS), "only aiobpf's own process metrics are left"
    assert not any(name.startswith("aiobpf_process_") for name in own)


def test_time_histograms_start_at_4_us_and_the_series_cap_holds() -> None:
    text = _scrape()
    step = next(f for f in text_string_to_metric_families(text)
                if f.name == BY_KEY["step_time"].name)
    edges = [float(s.labels["le"]) for s in step.samples if s.name.endswith("_bucket")]
    assert edges == pytest.approx([*TIME_BUCKETS, float("inf")], rel=1e-8)
    assert edges[0] == 4.096e-06 and round(edges[-2]) == 69
    per_process = [line for line in text.splitlines() if 'pid="7"' in line]
    assert len(per_process) == series_cap(10)   # 20 sites: the top 10 and (other)


def test_help_says_where_values_come_from() -> None:
    assert BY_KEY["pending"].documentation == "Pending asyncio tasks (memory read)."
    assert BY_KEY["steps"].documentation == (
        "Task steps (BPF; estimated between capture windows).")
    assert BY_KEY["processes"].documentation == "Processes traced now."


def test_the_own_registry_is_what_the_table_says() -> None:
    registry = own_metrics(Rejections())
    names = {s.name for f in registry.collect() for s in f.samples}
    assert names == set(OWN_PROCESS_METRICS)   # no rejections yet: no samples of them
    assert isinstance(registry, CollectorRegistry)


def _counted_kinds() -> set[str]:
    """Every error kind aiobpf's code can count: ``x.errors["kind"]`` (either branch of
    a conditional too), ``_kind(exc, "default")``, and the kinds ``CaptureUnavailable``
    is raised with (and its default), found in the syntax trees of the package."""
    def strings(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.IfExp):
            return strings(node.body) + strings(node.orelse)
        return []

    kinds: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "errors"):
                kinds.update(strings(node.slice))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id == "_kind" and len(node.args) == 2:
                    kinds.update(strings(node.args[1]))
                if node.func.id == "CaptureUnavailable":
                    for arg in [*node.args[1:], *(k.value for k in node.keywords)]:
                        kinds.update(strings(arg))
            elif isinstance(node, ast.ClassDef) and node.name == "CaptureUnavailable":
                init = next(n for n in node.body
                            if isinstance(n, ast.FunctionDef) and n.name == "__init__")
                kinds.update(s for d in init.args.defaults for s in strings(d))
    return kinds


def test_every_error_kind_counted_is_documented() -> None:
    """ERROR_KINDS (the README's "Error kinds") names exactly the kinds the code counts."""
    counted = _counted_kinds()
    assert {"internal", "bpf_load", "attach", "too_many_files", "read_limit"} <= counted
    assert counted == set(ERROR_KINDS), (counted ^ set(ERROR_KINDS))
