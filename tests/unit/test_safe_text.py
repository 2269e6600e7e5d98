"""safe_text: the one rule for text a target chose (labels, logs, terminals, JSON)."""

from __future__ import annotations

import json
import logging

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from aiobpf.collector.model import Frame, Snapshot, Task
from aiobpf.exporters.prometheus import (
    OTHER_SITE,
    MetricsCollector,
    summarize,
)
from aiobpf.exporters.render import render
from aiobpf.exporters.state import DaemonState, ProcessView, StepCounts
from aiobpf.safe_text import (
    ELLIPSIS,
    NAME_MAX,
    SITE_MAX,
    SafeLogRecords,
    escape,
    escape_all,
    from_bytes,
    json_exact,
    label,
    terminal_lines,
    valid,
)

HOSTILE = ["\x1b[2J\nfake line", "a\"b}c\\d", "\udcff\udcfe", "ok\ud800", "\u202eevil",
           "\x00\x7f\x85\x9b\u2028\u2029\ufeff", "x" * 10_000 + "\x1b", "tab\tcr\r"]


def test_printable_text_is_kept_as_is() -> None:
    for text in ("Task-1", "tâches_é", "main /home/user/app.py:5", "日本語 🐍", "a b"):
        assert escape(text) == text and label(text) == text


def test_controls_separators_and_backslashes_are_escaped_as_repr_writes_them() -> None:
    assert escape("\x1b[2J\nfake line") == "\\x1b[2J\\nfake line"
    assert escape("tab\tcr\r\\") == "tab\\tcr\\r\\\\"
    assert escape("\x00\x7f\x85\x9b") == "\\x00\\x7f\\x85\\x9b"
    assert escape("\u2028\u202e\ufeff") == "\\u2028\\u202e\\ufeff"
    assert escape("\U000e0001") == "\\U000e0001"


def test_every_ascii_character_is_kept_or_escaped_as_repr_writes_it() -> None:
    """(Plain ASCII takes a shortcut in escape: it must still catch C0, DEL and ``\\``.)"""
    for code in range(128):
        char = chr(code)
        assert escape(f"a{char}b") == f"a{repr(char)[1:-1]}b", code


@given(st.lists(st.sampled_from(["Task-1", "leaf-7", "a b", "", "tâche", *HOSTILE]),
                max_size=6))
def test_escape_all_is_escape_of_each(texts: list[str]) -> None:
    assert escape_all(texts) == [escape(text) for text in texts]


def test_bytes_that_are_not_utf8_become_replacement_characters() -> None:
    assert from_bytes(b"Name:\t\xff\x1b\n") == "Name:\t\ufffd\x1b\n"
    assert valid("é\udcc3\udca9\udcff") == "éé\ufffd"    # surrogateescape'd bytes: decoded
    assert valid("ok\ud800") == "ok\ufffd"                # any other lone surrogate
    assert escape("\udcff\x1b") == "\ufffd\\x1b"


def test_every_label_is_valid_utf8_printable_and_bounded() -> None:
    for text in HOSTILE:
        for limit in (NAME_MAX, SITE_MAX):
            value = label(text, limit)
            value.encode("utf-8")        # strict: no surrogates
            assert value.isprintable() and len(value) <= limit, repr(value)
    long = label("x" * 10_000)
    assert len(long) == NAME_MAX and long.endswith(ELLIPSIS)


def test_terminal_lines_keep_only_their_own_line_breaks() -> None:
    assert terminal_lines("aiobpf: bad \x1b[31m\n  hint") == "aiobpf: bad \\x1b[31m\n  hint"


def test_json_stays_exact_and_prints_no_raw_control_character() -> None:
    for text in HOSTILE:
        document = json_exact(json.dumps({"name": text}, ensure_ascii=False))
        document.encode("utf-8")
        assert document.isprintable(), repr(document)
        assert json.loads(document) == {"name": text}


def test_json_output_of_a_snapshot_with_undecodable_names_is_writable_and_exact() -> None:
    frame = Frame("q\udcff\x9b", "/f\udcfe.py", 1)
    snapshot = Snapshot(1, "3.14.1", "release", "/usr/bin/py\udcff", [],
                        [Task(1, "t\x85\udcff", 0, "pending", [frame])], 0.0, 0.0)
    text = "".join(render(snapshot, "json"))
    text.encode("utf-8")
    document = json.loads(text)
    assert document["python"]["executable"] == "/usr/bin/py\udcff"
    assert document["tasks"][0]["name"] == "t\x85\udcff"
    assert document["tasks"][0]["frames"][0]["name"] == "q\udcff\x9b"


def _view(name: str, frames: list[Frame]) -> ProcessView:
    snapshot = Snapshot(1, "3.14.1", "release", "/usr/bin/python3.14", [],
                        [Task(i, "t", 0, "pending", [fr]) for i, fr in enumerate(frames)], 0, 0)
    return ProcessView(pid=1, process=name, python="3.14\x1b", container="",
                       capture="memory", summary=summarize(snapshot, 3), counts=StepCounts())


def test_a_scrape_of_hostile_labels_is_valid_and_parses() -> None:
    evil = [Frame(f"q{i}\n\x1b\"}}\\\udcff", "/tmp/\x1b" + "f" * 10_000 + ".py", i)
            for i in range(5)]
    view = _view("\x1b[2J\n\udcff" + "n" * 10_000, evil)
    registry = CollectorRegistry()
    registry.register(MetricsCollector(lambda: DaemonState([view])))
    exposition = generate_latest(registry).decode("utf-8")
    labels = [s.labels for fam in text_string_to_metric_families(exposition)
              for s in fam.samples if s.labels.get("pid") == "1"]
    assert labels
    for sample in labels:
        for key, value in sample.items():
            assert value.isprintable() and len(value) <= (SITE_MAX if key == "site"
                                                           else NAME_MAX), (key, value)
    assert {s["process"] for s in labels} == {label("\x1b[2J\n\udcff" + "n" * 10_000)}
    assert {s["python"] for s in labels} == {"3.14\\x1b"}
    sites = {s["site"] for s in labels if "site" in s}
    assert len(sites) == 4 and OTHER_SITE in sites    # top 3 + (other)


def test_sites_equal_once_escaped_and_cut_are_counted_as_one() -> None:
    same = "/tmp/" + "f" * 10_000
    view = _view("p", [Frame("q", same + "1.py", 1), Frame("q", same + "2.py", 1)])
    assert view.summary is not None
    assert [n for _, n in view.summary.sites] == [2]


def test_log_records_are_one_escaped_line() -> None:
    record = logging.LogRecord("aiobpf", logging.INFO, __file__, 1,
                               "pid %d (%s): traced", (5, "x\n\x1b[2Jforged: y" + "z" * 5000), None)
    assert SafeLogRecords().filter(record)
    message = record.getMessage()
    assert message.startswith("pid 5 (x\\n\\x1b[2Jforged: y") and "\n" not in message
    assert message.isprintable() and len(message) <= 2048
